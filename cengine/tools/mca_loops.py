"""Static estimates of the kernels' hot loops on CPUs we cannot run on, through llvm-mca.

    python cengine/tools/mca_loops.py cengine/src/gemv.o skylake-avx512,icelake-server \
        gemv_blk_bf16 gemv_blk_bf16_z ...

For each function (a kernel of gemv.c's table or gemm.c's micro_*), takes its innermost loop with
the most multiply lanes (vmulps / vfmadd*ps; the widest tile of that kernel), feeds it to llvm-mca
(any version with the CPU model) and prints cycles per 8 mul/FMA lanes. The 256-bit and 512-bit
kernels do the same multiplies per output, so the ratio of two kernels' figures is their speed ratio
with every operand in L1: a model of the core, not a measurement (no memory, no frequency license).
The .o files are the in-place build's (cengine/build_cengine.py). Developer tool, not packaged.
"""
import re
import shutil
import subprocess
import sys

MCA = shutil.which("llvm-mca") or "llvm-mca"


def disassembly(obj):
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True,
                          check=True).stdout


def body(dis, fn):
    m = re.search(r"^[0-9a-f]+ <%s>:\n(.*?)(?:\n\n|\Z)" % re.escape(fn), dis, re.S | re.M)
    if not m:
        raise SystemExit(f"{fn}: not in the object file")
    lines = []
    for line in m.group(1).splitlines():
        mm = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if mm:
            lines.append((int(mm.group(1), 16), mm.group(2).split("#")[0].strip()))
    return lines


def backward_target(addr, ins):
    mm = re.match(r"(j\w+)\s+([0-9a-f]+)", ins)
    return int(mm.group(2), 16) if mm and mm.group(1) != "jmp" and int(mm.group(2), 16) < addr else None


def innermost_loops(lines):
    addrs = [a for a, _ in lines]
    for i, (a, ins) in enumerate(lines):
        t = backward_target(a, ins)
        if t is None or t not in addrs:
            continue
        loop = lines[addrs.index(t):i]
        if any(backward_target(b, x) is not None for b, x in loop):
            continue  # holds another loop
        yield [x for _, x in loop if not re.match(r"(nop|data16|cs nop|xchg %ax)", x) and not x.startswith("j")]


def lanes(loop):
    n = 0
    for x in loop:
        if re.match(r"v(fmadd|fnmadd|mul)\w*ps", x):
            n += 16 if "zmm" in x else 8 if "ymm" in x else 4
    return n


def main(argv):
    obj, cpus, funcs = argv[0], argv[1].split(","), argv[2:]
    dis = disassembly(obj)
    for fn in funcs:
        loop = max(innermost_loops(body(dis, fn)), key=lanes)
        asm = "\n".join(loop) + "\n"
        row = []
        for cpu in cpus:
            r = subprocess.run([MCA, "-mcpu=" + cpu, "-iterations=200"], input=asm, capture_output=True, text=True)
            m = re.search(r"Total Cycles:\s+(\d+)", r.stdout)
            row.append(f"{cpu} {float(m.group(1)) / 200 / lanes(loop) * 8:.3f}" if m else f"{cpu} n/a")
        print(f"{fn:24} {len(loop):3} insns {lanes(loop):4} lanes | cycles per 8 lanes: " + "  ".join(row))


if __name__ == "__main__":
    main(sys.argv[1:])
