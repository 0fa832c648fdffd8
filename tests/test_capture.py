import pytest
import torch

from mechprobe.capture import AttentionRecorder, capture, pad_batch, pad_queries
from mechprobe.utils import MechprobeError

from .conftest import tiny_gpt2, tiny_llama


def reference_rows(model, ids, queries):
    """Rows taken from output_attentions=True, one prompt at a time: (L, H, Q, T)."""
    with torch.no_grad():
        att = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions  # L x (1, H, T, T)
    return torch.stack([a[0][:, queries] for a in att])


@pytest.mark.parametrize("method", ["rows", "hooks"])
@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_capture_equals_output_attentions_padded_batch(make, method):
    model = make()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 30, (n,), generator=g).tolist() for n in (7, 12, 4)]
    queries = [[6, 2], [11, 5, 0], [3]]
    ids, mask = pad_batch(seqs, pad_id=0)
    rows = capture(model, ids, mask, pad_queries(queries), method=method).rows  # (B, L, H, Q, T)
    assert model.config._attn_implementation == "eager"  # restored
    assert rows.shape[:3] == (3, model.config.num_hidden_layers, model.config.num_attention_heads)
    for b, (s, q) in enumerate(zip(seqs, queries)):
        ref = reference_rows(model, s, q)
        got = rows[b, :, :, : len(q), : len(s)]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert rows[b, :, :, : len(q), len(s) :].abs().sum() == 0  # a real query never sees pad keys
        assert rows[b, :, :, len(q) :].abs().sum() == 0  # padded query slots are zero
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-5, rtol=0)


def test_capture_layer_subset_and_hooks_removed(gpt2_tiny):
    ids, mask = pad_batch([[1, 2, 3, 4]], 0)
    rows = capture(gpt2_tiny, ids, mask, [[3]], layers=[1]).rows
    assert rows.shape[1] == 1
    full = capture(gpt2_tiny, ids, mask, [[3]]).rows
    torch.testing.assert_close(rows[:, 0], full[:, 1])
    assert all(not m._forward_hooks for m in gpt2_tiny.modules())


def test_non_eager_model_gives_clear_error_with_hooks():
    model = tiny_gpt2()
    model.set_attn_implementation("sdpa")
    ids, mask = pad_batch([[1, 2, 3]], 0)
    with pytest.raises(MechprobeError, match="returned no attention weights.*eager"):
        capture(model, ids, mask, [[2]], method="hooks")
    # the rows method computes the rows itself, so an sdpa-loaded model works, and is restored
    rows = capture(model, ids, mask, [[2]], method="rows").rows
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    torch.testing.assert_close(rows, capture(model, ids, mask, [[2]], method="hooks").rows, atol=1e-6, rtol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_query_beyond_prompt_errors(gpt2_tiny):
    ids, mask = pad_batch([[1, 2, 3], [1]], 0)
    with pytest.raises(MechprobeError, match="beyond its prompt"):
        capture(gpt2_tiny, ids, mask, [[2], [2]])


def test_recorder_logits_match_plain_forward(llama_tiny):
    ids, mask = pad_batch([[5, 6, 7, 8, 9]], 0)
    with torch.no_grad():
        plain = llama_tiny(input_ids=ids).logits[:, -1]
    _, last = capture(llama_tiny, ids, mask, [[4]], return_logits=True)
    torch.testing.assert_close(last, plain)
    out = capture(llama_tiny, ids, mask, [[4]])  # one return type whatever the flags
    assert type(out).__name__ == "Capture" and out.logits is None
    from mechprobe.capture import AttentionRecorder as A
    from mechprobe.capture import Recorder
    from mechprobe.capture import RowsRecorder as R

    assert issubclass(A, Recorder) and issubclass(R, Recorder)
    with AttentionRecorder(llama_tiny) as rec:
        assert len(rec.mods) == 2


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gpt_oss"])
@pytest.mark.parametrize("method", ["auto", "hooks"])
def test_capture_sharpened_architectures(kind, method):
    """Sharp attention (query and key weights x 20), GQA, a sliding window shorter than the prompt,
    attention sinks: the rows equal output_attentions and the logits equal a plain forward."""
    from .conftest import tiny_decoder

    model = tiny_decoder(kind, sharpen=20.0)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 60, (n,), generator=g).tolist() for n in (11, 7)]
    queries = [[10, 6, 2], [6, 1]]
    ids, mask = pad_batch(seqs, pad_id=0)
    rows, logits = capture(model, ids, mask, pad_queries(queries), method=method, return_logits=True)
    for b, (s, q) in enumerate(zip(seqs, queries)):
        ref = reference_rows(model, s, q)
        assert ref.max() > 0.9  # sharpened: some rows put nearly all their weight on one key
        torch.testing.assert_close(rows[b, :, :, : len(q), : len(s)], ref, atol=1e-5, rtol=0)
        with torch.no_grad():
            plain = model(input_ids=torch.tensor([s])).logits[0, -1]
        torch.testing.assert_close(logits[b], plain, atol=1e-4, rtol=0)
    if kind == "mistral":  # the window: the query at position 10 sees positions 7..10 only
        assert rows[0, :, :, 0, :7].abs().max() == 0
    if kind == "gpt_oss":  # sinks take weight: a row sums to less than 1
        assert rows[0, :, :, 0, :11].sum(-1).min() < 0.99


def test_rows_method_refuses_attention_sinks():
    from .conftest import tiny_decoder

    model = tiny_decoder("gpt_oss")
    ids, mask = pad_batch([[5, 6, 7, 8]], 0)
    with pytest.raises(MechprobeError, match="cannot reproduce this attention.*s_aux"):
        capture(model, ids, mask, [[3]], method="rows")
    assert model.config._attn_implementation == "eager"
