#!/usr/bin/env python3
"""The PyTorch peer of the streaming benchmark: the same online KD step as the TypeScript pipeline, in plain torch.

Same shapes (benchmarks/configs.json, or a whole shape passed with --spec by benchmarks/peer.ts), same model
(Llama: RMSNorm, RoPE rotating halves, grouped-query attention, SwiGLU, no biases; by default the student ties its
embeddings and the teacher has its own lm_head), same step: random token windows, the frozen teacher's forward under
torch.no_grad(), the student's forward, forward KL at tau = 1 (mean over tokens, no tau^2), backward, global-norm
clipping at 1.0, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.01 on matrices only), fp32 or bf16 autocast. It is
written as a torch user would write it (scaled_dot_product_attention, full [tokens, vocab] logits), not as a copy
of our chunked loss. With --compile it is the faster peer a NeMo-class user compares against: torch.compile of the
teacher's forward and of the student's forward with the loss, and AdamW(fused=True).

Prints one JSON line: tokens_per_s, per-stage milliseconds per step, peak RSS, peak device memory on cuda, compile
time, parameter counts, torch version and threads. When the device runs out of memory it prints instead one JSON
line {"oom": true, ...} with the shape and where it happened, and exits 3. Argument errors exit 2.
"""
import argparse
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
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher's forward and the student's forward with the loss; AdamW(fused=True)")
    return p.parse_args()


def fail(message):
    """An argument or setup error: one line on stderr (benchmarks/peer.ts shows it as the reason) and exit 2."""
    print(f"kd_step.py: {message}", file=sys.stderr)
    sys.exit(2)


def load_shape(args):
    if args.spec:
        try:
            return json.loads(args.spec)
        except json.JSONDecodeError as e:
            fail(f"--spec is not JSON ({e})")
    with open(os.path.join(HERE, "..", "configs.json")) as f:
        configs = json.load(f)["configs"]
    if args.config not in configs:
        fail(f"unknown config {args.config!r}; known: {', '.join(configs)}")
    return configs[args.config]


def intermediate_size(hidden):
    # The same rule as benchmarks/configs.ts: 8/3 hidden rounded up to a multiple of 64.
    return math.ceil(8 * hidden / 3 / 64) * 64


def resolve_side(shape, role):
    """One side with the defaults of benchmarks/configs.ts (resolveModelShape), checked the same way."""
    m = shape[role]
    r = {
        "hidden": m["hidden"],
        "layers": m["layers"],
        "heads": m["heads"],
        "kvHeads": m.get("kvHeads", m["heads"]),
        "intermediate": m.get("intermediate", intermediate_size(m["hidden"])),
        "tied": m.get("tied", role == "student"),
        "ropeTheta": m.get("ropeTheta", 10000),
    }
    if r["hidden"] % r["heads"] != 0 or (r["hidden"] // r["heads"]) % 2 != 0:
        fail(f"{role} hidden {r['hidden']} must split into {r['heads']} heads of even size (RoPE rotates halves)")
    if r["kvHeads"] < 1 or r["heads"] % r["kvHeads"] != 0:
        fail(f"{role} kvHeads {r['kvHeads']} must divide heads {r['heads']}")
    return r


def is_oom(error, torch):
    """A device out-of-memory error, also when torch.compile wraps it in one of its own."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    while error is not None:
        if oom is not None and isinstance(error, oom):
            return True
        if isinstance(error, RuntimeError) and "CUDA out of memory" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def main():
    args = parse_args()
    shape = load_shape(args)
    st, te = resolve_side(shape, "student"), resolve_side(shape, "teacher")
    if args.compile and (args.warmup if args.warmup is not None else shape["warmup"]) < 1:
        fail("--compile needs at least one warm-up step (--warmup 1): the first call compiles, and the measured steps must not include it")
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if args.compile and not hasattr(torch, "compile"):
        fail(f"--compile needs torch.compile (torch >= 2.0); this is torch {torch.__version__}. Run without --compile, or with a newer torch (--python).")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; run on the device machine, or with --device cpu")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    class RMSNorm(nn.Module):
        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def rope_tables(seq, head_dim, theta):
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    # torch < 2.0 (Debian bookworm ships 1.13) has no scaled_dot_product_attention: the explicit causal softmax
    # is what such a user would write, and what our tfjs attention computes.
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    dev = torch.device(args.device)
    causal = None if sdpa is not None else torch.triu(torch.full((shape["seq"], shape["seq"]), float("-inf"), device=dev), diagonal=1)

    def attention(q, k, v):
        # Grouped-query attention as transformers' repeat_kv: query head h reads key/value head h // groups. Works
        # with every torch and every SDPA kernel (flash for bf16, memory-efficient for fp32).
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if sdpa is not None:
            return sdpa(q, k, v, is_causal=True)
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + causal
        return torch.softmax(scores, dim=-1) @ v

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    class Block(nn.Module):
        def __init__(self, hidden, heads, kv_heads, inter):
            super().__init__()
            self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
            self.input_layernorm = RMSNorm(hidden)
            self.q_proj = nn.Linear(hidden, hidden, bias=False)
            self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(hidden, hidden, bias=False)
            self.post_attention_layernorm = RMSNorm(hidden)
            self.gate_proj = nn.Linear(hidden, inter, bias=False)
            self.up_proj = nn.Linear(hidden, inter, bias=False)
            self.down_proj = nn.Linear(inter, hidden, bias=False)

        def forward(self, x, cos, sin):
            b, s, d = x.shape
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k, v = (p(h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2) for p in (self.k_proj, self.v_proj))
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            a = attention(q, k, v)
            x = x + self.o_proj(a.transpose(1, 2).reshape(b, s, d))
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    class Llama(nn.Module):
        def __init__(self, vocab, seq, m):
            super().__init__()
            hidden = m["hidden"]
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Block(hidden, m["heads"], m["kvHeads"], m["intermediate"]) for _ in range(m["layers"]))
            self.norm = RMSNorm(hidden)
            self.lm_head = None if m["tied"] else nn.Linear(hidden, vocab, bias=False)
            cos, sin = rope_tables(seq, hidden // m["heads"], float(m["ropeTheta"]))
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
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)
    # enabled=False is a no-op that torch.compile traces like any other context.
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    where = "building the models"

    def report_oom(error):
        print(json.dumps({
            "oom": True,
            "where": where,
            "shape": {**shape, "student": st, "teacher": te},
            "tokens_per_step": batch * seq,
            "device": str(dev) + (" " + torch.cuda.get_device_name(dev) if cuda else ""),
            "device_total_bytes": torch.cuda.get_device_properties(dev).total_memory if cuda else None,
            "peak_device_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
            "precision": args.precision,
            "compiled": args.compile,
            "error": str(error).strip().split("\n")[0][:300],
            "torch_version": torch.__version__,
        }), flush=True)
        sys.exit(3)

    try:
        teacher = Llama(vocab, seq, te).to(dev).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = Llama(vocab, seq, st).to(dev).train()
        groups = [
            {"params": [p for p in student.parameters() if p.dim() >= 2], "weight_decay": 0.01},
            {"params": [p for p in student.parameters() if p.dim() < 2], "weight_decay": 0.0},
        ]
        adamw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
        optimizer = "AdamW"
        if args.compile:
            try:
                opt = torch.optim.AdamW(groups, fused=True, **adamw)
                optimizer = "AdamW fused"
            except (RuntimeError, ValueError, TypeError) as e:
                # torch < 2.4 fuses CUDA parameters only: the peer still runs, and its JSON says which optimizer ran.
                opt = torch.optim.AdamW(groups, **adamw)
                optimizer = f"AdamW (fused=True refused on {dev.type}: {str(e).strip()[:120]})"
        else:
            opt = torch.optim.AdamW(groups, **adamw)
    except Exception as e:
        if is_oom(e, torch):
            report_oom(e)
        raise

    def teacher_logits(ids):
        with torch.no_grad(), autocast():
            return teacher(ids).reshape(-1, vocab).float()

    def student_loss(ids, t_logits):
        with autocast():
            s_logits = student(ids).reshape(-1, vocab).float()
        # Forward KL(p_t || p_s) at tau = 1, mean over tokens: sum_v p_t (log p_t - log p_s).
        return F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean")

    if args.compile:
        # As a torch user speeds up this step: the teacher's forward, and the student's forward with the loss (its
        # backward compiled with it), each one graph; the optimizer's step is the fused kernel.
        teacher_logits = torch.compile(teacher_logits)
        student_loss = torch.compile(student_loss)
    gen = torch.Generator().manual_seed(args.seed)

    stages = {"read": 0.0, "teacherLogits": 0.0, "student fwd+bwd": 0.0, "optimizer": 0.0}
    step_s = []
    loss_value = float("nan")
    start = None
    try:
        for step in range(warmup + steps):
            where = f"step {step + 1}{' (warm-up)' if step < warmup else ''}"
            if step == warmup:
                start = time.perf_counter()
            t0 = time.perf_counter()
            windows = torch.randint(0, vocab, (batch, seq + 1), generator=gen)
            ids = windows[:, :-1].to(dev)
            sync()
            t1 = time.perf_counter()
            t_logits = teacher_logits(ids)
            sync()
            t2 = time.perf_counter()
            loss = student_loss(ids, t_logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sync()
            t4 = time.perf_counter()
            loss_value = loss.item()
            step_s.append(t4 - t0)
            print(f"step {step + 1}/{warmup + steps}{' (warm-up)' if step < warmup else ''}: {t4 - t0:.2f} s, loss {loss_value:.4f}", file=sys.stderr, flush=True)
            if step >= warmup:
                for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    stages[k] += dt * 1000
            del t_logits, loss
    except Exception as e:
        if is_oom(e, torch):
            report_oom(e)
        raise
    wall = time.perf_counter() - (start if start is not None else time.perf_counter())
    measured_s = wall / steps if steps > 0 else None
    print(json.dumps({
        "tokens_per_s": batch * seq * steps / wall if wall > 0 else None,
        "steps": steps,
        "warmup": warmup,
        "wall_ms_per_step": wall * 1000 / steps,
        "stages_ms_per_step": {k: v / steps for k, v in stages.items()},
        "warmup_s": sum(step_s[:warmup]),
        # The first call compiles: its time beyond a measured step's is the compilation (and autotuning) time.
        "compile_s": max(0.0, step_s[0] - measured_s) if args.compile and step_s and measured_s is not None else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "peak_device_reserved_bytes": torch.cuda.max_memory_reserved(dev) if cuda else None,
        "last_loss": loss_value,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "attention": "sdpa" if sdpa is not None else "explicit causal softmax",
        "device": str(dev) + (" " + torch.cuda.get_device_name(dev) if cuda else ""),
        "precision": args.precision,
        "compiled": args.compile,
        "optimizer": optimizer,
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }))

if __name__ == "__main__":
    main()
