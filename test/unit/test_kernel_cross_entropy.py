"""The fused output projection + cross-entropy against its plain-PyTorch reference: the loss and
both gradients, memory (the logits are never held whole), and its guards."""

import pytest
import torch
from kernel_checks import (
    DEVICE,
    DTYPES,
    assert_passes_opcheck,
    check,
    compare,
    linear_loss_fns,
    lm_inputs,
    randn,
    refusal_test,
    run_with_grads,
)

from tinytitan.kernels import cross_entropy
from tinytitan.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_matches_reference(dtype):
    # On CPU 45 tokens in 7 chunks (vocab / dim, rounded up) of up to 7 tokens; every third ignored.
    hidden, weight, labels = lm_inputs(45, 48, 301, dtype, ignored=range(0, 45, 3))
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy", ours, ref, [hidden, weight], [0, 1], torch.tensor(1.7, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_of_large_logits(dtype):
    """Logits around +-300: softmax is almost one-hot and exp would overflow without the running
    maximum. In float32 the gradients' error grows with the logits' magnitude (exp turns an
    absolute error of ~300 * 2^-24 in x - lse into that relative error), hence 1e-4."""
    hidden, weight, labels = lm_inputs(30, 40, 257, dtype, scale=100.0, ignored=[4, 5])
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy x100", ours, ref, [hidden, weight], [0, 1], None, fp32_tolerance=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_over_several_vocabulary_blocks(dtype):
    """A vocabulary over 4096 takes two steps of each row's loop; the largest logits sit in the
    second, so the running maximum must rescale the sum gathered in the first."""
    hidden, weight, labels = lm_inputs(12, 32, 4099, dtype, ignored=[3])
    hidden[:, 0] = 3.0
    weight[4096:, 0] = 8.0  # these rows' logits are about 24, all others a few units at most
    labels[:4] = torch.tensor([0, 4095, 4096, 4098])
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy 2 blocks", ours, ref, [hidden, weight], [0, 1], None)


def test_linear_cross_entropy_of_views_and_int32_labels():
    hidden, weight, labels = lm_inputs(21, 64, 150, torch.float32, ignored=[0, 20])
    hidden = hidden[:, ::2]  # [21, 32], rows 64 apart
    weight = weight[:, 16:48]  # [150, 32], not contiguous either
    ours = lambda h, w: linear_cross_entropy_triton(h, w, labels.to(torch.int32))  # noqa: E731
    ref = lambda h, w: linear_cross_entropy_reference(h, w, labels)  # noqa: E731 (F.cross_entropy takes int64 only)
    compare("linear_cross_entropy views", ours, ref, [hidden, weight], [0, 1], None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_labels_give_zero_loss_and_zero_gradients(dtype):
    hidden, weight, labels = lm_inputs(9, 16, 40, dtype, ignored=range(9))
    hidden.requires_grad_()
    weight.requires_grad_()
    loss = linear_cross_entropy_triton(hidden, weight, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_linear_cross_entropy_without_grad_and_under_autocast():
    hidden, weight, labels = lm_inputs(10, 24, 70, torch.float32, ignored=[2])
    with torch.no_grad():
        no_grad = linear_cross_entropy_triton(hidden, weight, labels)
    check("no_grad loss", no_grad, linear_cross_entropy_reference(hidden, weight, labels), None)
    # Under autocast both are cast to bfloat16, as nn.Linear's inputs would be.
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        autocast = linear_cross_entropy_triton(hidden, weight, labels)
    expected = linear_cross_entropy_reference(hidden.bfloat16(), weight.bfloat16(), labels)
    assert autocast.dtype == torch.float32
    assert abs(autocast.item() - expected.item()) <= 1e-5 * abs(expected.item())


def largest_allocation(fn) -> int:
    """The most bytes any one aten op of fn() (its backward included) allocated on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::"))


@pytest.mark.skipif(
    DEVICE != "cpu", reason="measures CPU allocations; on CUDA see test_fused_loss_never_holds_the_logits"
)
def test_linear_cross_entropy_never_holds_the_logits():
    """The reference makes [tokens, vocab] float32 logits in one allocation; the fused loss makes
    them a chunk at a time (hidden is [200, 16], so a chunk holds about that much)."""
    hidden, weight, labels = lm_inputs(200, 16, 300, torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    logits_bytes = 200 * 300 * 4
    assert largest_allocation(lambda: linear_cross_entropy_reference(hidden, weight, labels).backward()) >= logits_bytes
    assert (
        largest_allocation(lambda: linear_cross_entropy_triton(hidden, weight, labels).backward()) <= logits_bytes / 4
    )


def test_out_of_range_label_makes_the_loss_nan():
    hidden, weight, labels = lm_inputs(4, 8, 20, torch.float32)
    labels[1] = 20
    assert torch.isnan(linear_cross_entropy_triton(hidden, weight, labels))


def bad_calls():
    h, W, labels = randn(4, 8), randn(10, 8), torch.zeros(4, dtype=torch.long, device=DEVICE)
    return [
        (
            lambda: linear_cross_entropy_triton(h[None], W, labels),
            r"hidden has shape \(1, 4, 8\): expected 2 dimensions",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W[:, :6], labels),
            r"weight has shape \(10, 6\): expected \[vocab, 8\]",
        ),
        (lambda: linear_cross_entropy_triton(h, W, labels[:3]), r"labels has shape \(3,\): expected \(4,\)"),
        (
            lambda: linear_cross_entropy_triton(h, W, labels.float()),
            "labels has dtype torch.float32: expected torch.int32 or torch.int64",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W.to(torch.bfloat16), labels),
            "weight has dtype torch.bfloat16: expected the dtype of hidden, torch.float32",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W, labels, ignore_index=-1.5),
            "ignore_index is -1.5: expected an integer",
        ),
    ]


test_bad_inputs_are_refused_with_a_clear_error = refusal_test(bad_calls)


def op_samples():
    labels = torch.tensor([1, 2, -100, 4, 5, 49], device=DEVICE)
    return [
        (
            cross_entropy.linear_cross_entropy,
            (randn(6, 16).requires_grad_(), randn(50, 16).requires_grad_(), labels, -100, True),
        ),
        (cross_entropy.linear_cross_entropy, (randn(6, 16), randn(50, 16), labels, -100, False)),
    ]


@pytest.mark.parametrize("case", range(2))
def test_custom_op_passes_opcheck(case):
    assert_passes_opcheck(*op_samples()[case])


@pytest.mark.gpu
def test_fused_loss_never_holds_the_logits():
    """At the benchmark's 16384 tokens x 32000 vocabulary the bf16 logits alone take 1000 MiB (and
    the reference also makes float32 copies); the fused loss, in chunks of 4096 tokens, must stay
    under one bf16 copy, and still agree with the reference."""
    hidden, weight, labels = lm_inputs(16384, 2048, 32000, torch.bfloat16, ignored=range(0, 16384, 5))
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = linear_cross_entropy_triton(hidden, weight, labels)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 16384 * 32000 * 2, f"peak {extra / 2**20:.0f} MiB above the inputs"
    ours = [loss.detach(), hidden.grad, weight.grad]
    ref = run_with_grads(lambda h, w: linear_cross_entropy_reference(h, w, labels), [hidden, weight], [0, 1], None)
    oracle = run_with_grads(
        lambda h, w: linear_cross_entropy_reference(h, w, labels), [hidden, weight], [0, 1], None, upcast=True
    )
    for name, a, b, c in zip(["loss", "d(hidden)", "d(weight)"], ours, ref, oracle):
        check(name, a, b, c, low_precision=True)
