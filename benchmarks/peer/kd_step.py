#!/usr/bin/env python3
"""The PyTorch peer of the streaming benchmark: the same online KD step as the TypeScript pipeline, in plain torch.

Same shapes (benchmarks/configs.json, or a whole shape passed with --spec by benchmarks/peer.ts), same model
(Llama: RMSNorm, RoPE rotating halves, SwiGLU, no biases; the student ties its embeddings, the teacher has its own
lm_head), same step: random token windows, the frozen teacher's forward under torch.no_grad(), the student's
forward, forward KL at tau = 1 (mean over tokens, no tau^2), backward, global-norm clipping at 1.0, AdamW
(betas 0.9/0.95, eps 1e-8, weight decay 0.01 on matrices only), fp32. It is written as a torch user would write
it (scaled_dot_product_attention, full [tokens, vocab] logits), not as a copy of our chunked loss.

Prints one JSON line: tokens_per_s, per-stage milliseconds per step, peak RSS, torch version and threads.
"""
import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="S", help="a name in benchmarks/configs.json (tiny, S, M, L)")
    p.add_argument("--spec", default=None, help="a whole shape as JSON; overrides --config")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: the config's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: the config's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu", help="cpu, or cuda on the device machine")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast matmuls to bfloat16 (loss and master weights stay fp32)")
    return p.parse_args()


def load_shape(args):
    if args.spec:
        return json.loads(args.spec)
    with open(os.path.join(HERE, "..", "configs.json")) as f:
        configs = json.load(f)["configs"]
    if args.config not in configs:
        sys.exit(f"kd_step.py: unknown config {args.config!r}; known: {', '.join(configs)}")
    return configs[args.config]


def intermediate_size(hidden):
    # The same rule as benchmarks/configs.ts: 8/3 hidden rounded up to a multiple of 64.
    return math.ceil(8 * hidden / 3 / 64) * 64


def main():
    args = parse_args()
    shape = load_shape(args)
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope_tables(seq, head_dim, theta=10000.0):
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    # torch < 2.0 (Debian bookworm ships 1.13) has no scaled_dot_product_attention: the explicit causal softmax
    # is what such a user would write, and what our tfjs attention computes.
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    causal = torch.triu(torch.full((shape["seq"], shape["seq"]), float("-inf")), diagonal=1)

    def attention(q, k, v):
        if sdpa is not None:
            return sdpa(q, k, v, is_causal=True)
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + causal
        return torch.softmax(scores, dim=-1) @ v

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    class Block(nn.Module):
        def __init__(self, hidden, heads):
            super().__init__()
            self.heads, self.head_dim = heads, hidden // heads
            self.input_layernorm = RMSNorm(hidden)
            self.q_proj = nn.Linear(hidden, hidden, bias=False)
            self.k_proj = nn.Linear(hidden, hidden, bias=False)
            self.v_proj = nn.Linear(hidden, hidden, bias=False)
            self.o_proj = nn.Linear(hidden, hidden, bias=False)
            self.post_attention_layernorm = RMSNorm(hidden)
            inter = intermediate_size(hidden)
            self.gate_proj = nn.Linear(hidden, inter, bias=False)
            self.up_proj = nn.Linear(hidden, inter, bias=False)
            self.down_proj = nn.Linear(inter, hidden, bias=False)

        def forward(self, x, cos, sin):
            b, s, d = x.shape
            h = self.input_layernorm(x)
            q, k, v = (p(h).view(b, s, self.heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            a = attention(q, k, v)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, s, d))
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Llama(nn.Module):
        def __init__(self, vocab, hidden, layers, heads, tied, seq):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
            self.norm = RMSNorm(hidden)
            self.lm_head = None if tied else nn.Linear(hidden, vocab, bias=False)
            cos, sin = rope_tables(seq, hidden // heads)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, ids):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin)
            x = self.norm(x)
            head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            return x @ head.t()

    vocab, seq, batch = shape["vocab"], shape["seq"], shape["batch"]
    steps = args.steps if args.steps is not None else shape["steps"]
    warmup = args.warmup if args.warmup is not None else shape["warmup"]
    st, te = shape["student"], shape["teacher"]
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.precision == "bf16" else (lambda: contextlib.nullcontext())
    teacher = Llama(vocab, te["hidden"], te["layers"], te["heads"], tied=False, seq=seq).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = Llama(vocab, st["hidden"], st["layers"], st["heads"], tied=True, seq=seq).to(dev).train()
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)

    stages = {"read": 0.0, "teacherLogits": 0.0, "student fwd+bwd": 0.0, "optimizer": 0.0}
    loss_value = float("nan")
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        t0 = time.perf_counter()
        windows = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
        ids = windows[:, :-1].to(dev)
        sync()
        t1 = time.perf_counter()
        with torch.no_grad(), autocast():
            t_logits = teacher(ids).reshape(-1, vocab).float()
        sync()
        t2 = time.perf_counter()
        with autocast():
            s_logits = student(ids).reshape(-1, vocab).float()
        # Forward KL(p_t || p_s) at tau = 1, mean over tokens: sum_v p_t (log p_t - log p_s).
        loss = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sync()
        t4 = time.perf_counter()
        loss_value = loss.item()
        print(f"step {step + 1}/{warmup + steps}{' (warm-up)' if step < warmup else ''}: {t4 - t0:.2f} s, loss {loss_value:.4f}", file=sys.stderr, flush=True)
        if step >= warmup:
            for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[k] += dt * 1000
        del t_logits, s_logits, loss
    wall = time.perf_counter() - (start if start is not None else time.perf_counter())
    print(json.dumps({
        "tokens_per_s": batch * seq * steps / wall if wall > 0 else None,
        "steps": steps,
        "warmup": warmup,
        "wall_ms_per_step": wall * 1000 / steps,
        "stages_ms_per_step": {k: v / steps for k, v in stages.items()},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "last_loss": loss_value,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "attention": "sdpa" if sdpa is not None else "explicit causal softmax",
        "device": str(dev) + (" " + torch.cuda.get_device_name(0) if dev.type == "cuda" else ""),
        "precision": args.precision,
    }))


if __name__ == "__main__":
    main()
