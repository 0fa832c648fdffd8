"""Download the real datasets (the command line of downloads.py):

python -m mechprobe.data download proofwriter       # ProofWriter V2020.12.3 (AI2), about 1 GB unpacked
python -m mechprobe.data download entailment_bank   # EntailmentBank task_1 / task_2, dev and test
python -m mechprobe.data download street            # STREET's ARC reasoning graphs
python -m mechprobe.data list
"""

import argparse

from .downloads import DATA_DIR, DATASETS, download
from .utils import run_main


def main(argv=None):
    p = argparse.ArgumentParser(description="Download the real datasets (the only step that uses the network).")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch one dataset into data/ (sha256 checked)")
    d.add_argument("name", choices=sorted(DATASETS))
    d.add_argument("--data-dir", default=DATA_DIR)
    sub.add_parser("list", help="the datasets, where they go and their licences")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for n, ds in DATASETS.items():
            print(f"{n:16s} -> {DATA_DIR}/{ds.folder}/  {ds.what}; licence: {ds.licence}")
        return
    folder = download(a.name, a.data_dir)
    print(f"{a.name}: {folder}")


if __name__ == "__main__":
    run_main(main)
