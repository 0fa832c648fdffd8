"""Download the real datasets (the command line of downloads.py):

python -m mechprobe.data download proofwriter       # ProofWriter V2020.12.3 (AI2), about 1 GB unpacked
python -m mechprobe.data download entailment_bank   # EntailmentBank task_1 / task_2, dev and test
python -m mechprobe.data download street            # STREET's ARC reasoning graphs
python -m mechprobe.data list
python -m mechprobe.data ksmallest --out data/ksmallest/min01 --k 1   # the k-th smallest task's lists (offline)
"""

import argparse

from .cli import run_main, seed_int
from .downloads import DATA_DIR, DATASETS, download
from .utils import get_logger


def main(argv=None):
    p = argparse.ArgumentParser(description="Download the real datasets (the only step that uses the network).")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch one dataset into data/ (sha256 checked)")
    d.add_argument("name", choices=sorted(DATASETS))
    d.add_argument("--data-dir", default=DATA_DIR)
    sub.add_parser("list", help="the datasets, where they go and their licences")
    _ksmallest_args(sub.add_parser("ksmallest", help="generate the k-th smallest task's lists (train/val/test)"))
    a = p.parse_args(argv)
    if a.cmd == "ksmallest":
        from .ksmallest import vocab_for, write_dataset

        vocab, source = vocab_for(a.tokenizer, a.vocab_size)
        meta = write_dataset(a.out, vocab, a.k, a.length, not a.no_duplicates, a.seed, tuple(a.sizes), source)
        get_logger().info("wrote %s (train/val/test = %s, k=%d, %d numbers)", a.out, meta["sizes"], a.k, len(vocab))
        return meta
    if a.cmd == "list":
        for n, ds in DATASETS.items():
            print(f"{n:16s} -> {DATA_DIR}/{ds.folder}/  {ds.what}; licence: {ds.licence}")
        return
    folder = download(a.name, a.data_dir)
    print(f"{a.name}: {folder}")


def _ksmallest_args(p):
    p.add_argument("--out", required=True, help="output folder, e.g. data/ksmallest/min01")
    p.add_argument(
        "--k", type=int, default=1, help="0-indexed rank of the answer (1 = second smallest, the paper's min01)"
    )
    p.add_argument("--length", type=int, default=16, help="numbers per list")
    p.add_argument("--vocab-size", type=int, default=512, help="how many numbers to draw from")
    p.add_argument(
        "--tokenizer",
        default="scratch",
        help="a local tokenizer/model folder whose single-token numbers form the vocabulary, or 'scratch' for 0..N-1",
    )
    p.add_argument("--no-duplicates", action="store_true", help="draw without replacement")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--sizes", type=int, nargs=3, default=[100000, 2000, 2000], metavar=("TRAIN", "VAL", "TEST"))


if __name__ == "__main__":
    run_main(main)
