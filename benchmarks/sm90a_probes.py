"""Compiled-code facts behind docs/kernels.md's "Batch 8" section and the store notes, for sm_90a
on a machine with no GPU (Triton's own ptxas and nvdisasm, as static_cost.py):

    python benchmarks/sm90a_probes.py --out benchmarks/results/sm90a-probes-COMMIT.json

- the decode key loop's instructions (the integer pipe's among them) with lookup 5's permutes as
  now and as at 35b2748, keys masked per key or per score;
- the split-merge launch: registers, barriers (inside loops too), global loads;
- the store kernel's SASS instructions by opcode, per coordinate of one branch (K or V);
- whether Triton 3.6's automatic warp specialization (``tl.range(warp_specialize=True)``)
  partitions a small flash-attention loop on Hopper, with plain loads and with tensor
  descriptors at 4 and 8 warps.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re

import decode_levers
import static_cost
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tq_core.ops import triton_attention

SM90A = GPUTarget("cuda", 90, 32)


def merge_launch() -> dict:
    """The merge kernel of Llama-3-8B's decode (GQA 4, head_dim 128, rotated domain)."""
    kernel = triton_attention._merge_splits_kernel
    constants = dict(
        GROUP=4, NUM_KV_HEADS=8, D=128, BLOCK_M=16, UNIFORM_Q=1, UNROTATE=0, KRONECKER=0,
        ROT_COLS=128,
        WAIT_PRIOR=0, **static_cost._merge_constants(128, 4, False),
    )  # fmt: skip
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = {"signs_ptr": "*fp16", "out_ptr": "*bf16"}.get(name, "*fp32")
        else:
            signature[name] = "fp32" if name == "inv_sqrt_d" else "i32"
    source = ASTSource(
        kernel,
        signature,
        constexprs={(kernel.arg_names.index(k),): v for k, v in constants.items()},
    )
    compiled = triton.compile(source, target=SM90A, options={"num_warps": 4})
    report, lines = static_cost._sass(compiled)
    ops = _opcodes(lines)
    return {
        **static_cost._resources(report, lines),
        "barriers": sum(n for op, n in ops.items() if op.startswith("BAR.SYNC")),
        "barriers_inside_loops": _barriers_inside_loops(lines),
        "global_loads": sum(n for op, n in ops.items() if op.startswith("LDG")),
    }


def _barriers_inside_loops(lines: list[str]) -> int:
    """BAR.SYNC instructions between a label and a later branch back to it."""
    labels = {
        m.group(1): i
        for i, line in enumerate(lines)
        if (m := re.match(r"^\.(L_x_\d+):", line.strip()))
    }
    inside = set()
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i:
            inside.update(j for j in range(labels[m.group(1)], i) if "BAR.SYNC" in lines[j])
    return len(inside)


def _opcodes(lines: list[str]) -> collections.Counter:
    return collections.Counter(
        m.group(1) for line in lines if (m := static_cost._SASS_OP.search(line))
    )


def store_opcodes() -> dict:
    """The default store launch (64 rows, 4 warps, 32-column chunks), K4V4 bf16: SASS
    instructions by opcode per coordinate of one branch (both branches compile; each thread of
    a branch quantizes 64 rows x 128 columns / 128 threads = 64 coordinates)."""
    compiled = {}
    original = static_cost.triton.compile

    def keep(*args, **kwargs):
        compiled["kernel"] = original(*args, **kwargs)
        return compiled["kernel"]

    static_cost.triton.compile = keep
    try:
        row = static_cost.compile_store(64, 4, 32, False)
    finally:
        static_cost.triton.compile = original
    _, lines = static_cost._sass(compiled["kernel"])
    per_thread_coordinates = 2 * 64 * 128 // 128  # two branches
    ops = _opcodes(lines)
    return {
        "registers": row["registers"],
        "kernel_instructions": row["kernel_instructions"],
        "instructions_per_coordinate": round(sum(ops.values()) / per_thread_coordinates, 2),
        "per_coordinate": {
            op: round(n / per_thread_coordinates, 2) for op, n in ops.most_common(16)
        },
    }


@triton.jit
def _flash_loop(q_ptr, k, v, out_ptr, n, WS: tl.constexpr, DESCRIPTORS: tl.constexpr):
    """A flash-attention loop over 64-token tiles: K and V from pointers or tensor
    descriptors (TMA)."""
    rows = tl.arange(0, 64)
    dims = tl.arange(0, 128)
    q = tl.load(q_ptr + rows[:, None] * 128 + dims[None, :])
    acc = tl.zeros([64, 128], dtype=tl.float32)
    m_i = tl.full([64], float("-inf"), tl.float32)
    l_i = tl.zeros([64], tl.float32)
    for start in tl.range(0, n, 64, warp_specialize=WS):
        toks = start + tl.arange(0, 64)
        if DESCRIPTORS:
            k_tile = k.load([start, 0])
            v_tile = v.load([start, 0])
        else:
            k_tile = tl.load(k + toks[:, None] * 128 + dims[None, :])
            v_tile = tl.load(v + toks[:, None] * 128 + dims[None, :])
        s = tl.dot(q, tl.trans(k_tile))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.float16), v_tile, acc * alpha[:, None])
        m_i = m_new
    tl.store(out_ptr + rows[:, None] * 128 + dims[None, :], acc / l_i[:, None])


def warp_specialization(descriptors: bool, num_warps: int) -> dict:
    """Compile the loop with warp_specialize on and off: did the PTX change (a partition), or
    did the compiler fail (its message)? A failed assertion in the compiler aborts the process,
    so each compile runs in a child process."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        results = [pool.apply(_compile_loop, (descriptors, num_warps, ws)) for ws in (False, True)]
    outcome = {"descriptors": descriptors, "num_warps": num_warps}
    if any(isinstance(r, str) and r.startswith("error") for r in results):
        outcome["result"] = next(r for r in results if r.startswith("error"))
    else:
        outcome["result"] = "partitioned" if results[0] != results[1] else "same PTX (ignored)"
    return outcome


def _compile_loop(descriptors: bool, num_warps: int, ws: bool) -> str:
    operand = "tensordesc<fp16[64, 128]>" if descriptors else "*fp16"
    signature = {"q_ptr": "*fp16", "k": operand, "v": operand, "out_ptr": "*fp32", "n": "i32",
                 "WS": "constexpr", "DESCRIPTORS": "constexpr"}  # fmt: skip
    names = _flash_loop.arg_names
    source = ASTSource(
        _flash_loop,
        signature,
        constexprs={(names.index("WS"),): ws, (names.index("DESCRIPTORS"),): descriptors},
    )
    try:
        compiled = triton.compile(
            source, target=SM90A, options={"num_warps": num_warps, "num_stages": 3}
        )
    except Exception as error:  # the compiler's own message is the finding
        return f"error: {str(error).splitlines()[0][:200]}"
    return compiled.asm["ptx"].split("\n", 1)[1]


# SASS opcodes of the integer pipe the decode loop's lookup and masks load (ncu found the
# kernel waiting on it: docs/kernels.md, "The decode kernel waits on latency").
_INTEGER_PIPE = ("PRMT", "LOP3", "SHF", "FSEL", "SEL", "ISETP", "PLOP3", "FMNMX", "IADD3")


def decode_loop(asm_variant: str | None, key_mask: bool) -> dict:
    """The decode key loop at the default launch (K4V4, Llama-3-8B shape): lookup 5's asm as
    now or as ``asm_variant`` (a decode_levers row), keys masked per key or per score."""
    default = triton_attention.TUNING["decode"]
    with decode_levers._probed(asm_variant or ""):
        row = static_cost.compile_decode(
            4, 4, default["block_n"], default["num_warps"], default["lookup"],
            default["maxnreg"], default["prefetch"], num_stages=default["num_stages"],
            key_mask=key_mask,
        )  # fmt: skip
    ops = row["loop_ops"]
    return {
        "asm": asm_variant or "default", "key_mask": key_mask,
        "registers": row["registers"], "spill_store_bytes": row["spill_store_bytes"],
        "loop_instructions_per_thread": row["loop_instructions_per_thread"],
        "integer_pipe_ops": sum(n for op, n in ops.items() if op.split(".")[0] in _INTEGER_PIPE),
        "loop_ops": ops,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON to write")
    parser.add_argument("--git-sha", help="the commit compiled (when .git did not travel)")
    args = parser.parse_args()
    result = {
        "environment": decode_levers.measured_environment(args.git_sha),
        "decode_loop": [
            decode_loop(None, True),
            decode_loop(None, False),
            decode_loop("permutes at 35b2748", True),
            decode_loop("permutes at 35b2748", False),
            decode_loop("permutes, shifts as mul.hi", True),
        ],
        "merge_launch": merge_launch(),
        "store": store_opcodes(),
        "warp_specialization": [
            warp_specialization(False, 4),
            warp_specialization(False, 8),
            warp_specialization(True, 4),
            warp_specialization(True, 8),
        ],
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
