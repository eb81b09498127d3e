"""The training loss without the full logits: cross-entropy over the answer tokens, a chunk at a time.

The model's own loss multiplies every position's hidden state by the 65,024-word output matrix,
casts the logits to fp32 and keeps a softmax of them for the backward pass: at 1,024 tokens that is
about 0.8 GiB in flight, on a 6 GB card more than all the activations with checkpointing. Here the
output matrix is applied `CHUNK` positions at a time, and each chunk's gradient with respect to the
hidden states is computed at once, so only one chunk's logits ever exist. The output matrix is
frozen in LoRA training, so that gradient is all the backward pass needs. The numbers are the
model's own: the same bf16 matmul, fp32 log-softmax, sum over labelled tokens divided by the
Trainer's count of them. Positions without a label (the prompt, padding) are computed and masked
rather than picked out: picking them needs their count on the CPU, a sync that stalls the queue of
kernels a launch-bound training step depends on (compiled training ran 7% slower with it, H200),
for about 1% of the step's arithmetic.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..model.prompts import IGNORE_INDEX

CHUNK = 512  # tokens per chunk: 512 x 65,024 fp32 logits are 127 MiB


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets` where `valid`; its backward
    returns the gradient for `hidden` alone (computed in forward, chunk by chunk)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, valid):
        needs_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if needs_grad else None
        for start in range(0, hidden.shape[0], CHUNK):
            h, t, v = (x[start:start + CHUNK] for x in (hidden, targets, valid))
            logits = (h @ weight.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += ((log_norm - logits.gather(1, t[:, None]).squeeze(1)) * v).sum()
            if needs_grad:  # d(sum of losses)/d(logits) = softmax - one-hot, in place of the logits
                probs = logits.sub_(log_norm[:, None]).exp_()
                probs[torch.arange(len(t), device=t.device), t] -= 1
                grad[start:start + CHUNK] = (probs * v[:, None]).to(weight.dtype) @ weight
            del logits
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def chunked_causal_lm_loss(hidden, labels, weight, num_items_in_batch=None, ignore_index: int = IGNORE_INDEX,
                           **_):
    """What transformers' ForCausalLMLoss computes, from the final hidden states (B, T, H) instead of
    the logits: position t predicts labels[t + 1]; the sum over labelled tokens, divided by
    `num_items_in_batch` when the Trainer counts them over the accumulated batch, else the mean."""
    targets = labels[:, 1:].to(hidden.device).reshape(-1)
    valid = targets != ignore_index
    positions = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    if positions.dtype != weight.dtype:  # fp32 hidden states (the CPU, or accelerate's output cast)
        positions = positions.to(weight.dtype)
    total = _ChunkedCrossEntropy.apply(positions, weight, targets.clamp_min(0), valid.to(torch.float32))
    count = num_items_in_batch if num_items_in_batch is not None else valid.sum()
    if torch.is_tensor(count):
        count = count.to(total.device)
    return total / count


class _HiddenStates(nn.Module):
    """Stands in for the output layer while the loss is chunked: the model's `logits` are then its
    final hidden states, which the chunked loss turns into a loss."""

    def forward(self, hidden):
        return hidden


@contextlib.contextmanager
def chunked_loss(model):
    """Within this block, `model(**batch, labels=...)` computes its loss chunk by chunk (and its
    `logits` are the hidden states). The output layer is put back afterwards."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head, own_loss = causal_lm.lm_head, causal_lm.__dict__.get("_loss_function")
    causal_lm.lm_head = _HiddenStates()
    causal_lm.loss_function = lambda logits, labels, vocab_size=None, **kwargs: chunked_causal_lm_loss(
        logits, labels, head.weight, **kwargs)
    try:
        yield
    finally:
        causal_lm.lm_head = head
        if own_loss is None:
            del causal_lm._loss_function
        else:
            causal_lm.loss_function = own_loss
