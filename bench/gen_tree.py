#!/usr/bin/env python3
"""Deterministic test-tree generator for the filesync benchmark (stdlib only).

Every byte and every mtime this script writes is a pure function of the
parameters and the seed, so two runs with the same arguments produce
bit-identical trees, and `mutate` can both apply and undo its change.

Trees
  small  N files (default 20,000; --total-mb defaults to 5 KB a file, so 100 MB). Sizes are
         log-normal with a median of 4 KiB and a mean of about 5 KB, clamped
         to [0, 1 MiB]; one file in 1,000 is empty. The files are spread over
         210 directories three levels deep (10 x 4 x 4).
  large  K files (default 2) of S MiB each (default 512).
  many   N files (default 200,000) of 0..1024 bytes (uniform) in D directories
         (default 60,000) nested four levels deep: D/1500 top-level dirs, D/60
         on level 2, D/4 on level 3 and the rest on level 4, each hung under a
         parent chosen by the seed (every parent gets at least one child).
         Files live on levels 3 and 4 (a012/b0345/c05678/f0123456.dat,
         a012/b0345/c05678/d012345/f0123456.dat); every leaf directory holds
         at least one file, so there are no empty directories.
  million  the same shape scaled up: 1,000,000 files in 300,000 directories.

Content comes from random.Random(<string seed>).randbytes, one stream per
small file and one per 1 MiB chunk of a large file, so it is incompressible,
has no repeats inside or across files (nothing for a deduplicating or
delta-encoding tool to find), and any part of it can be regenerated alone.
The many/million files take their content from hashlib.shake_128 of a
per-file key instead (also incompressible, and about 4x faster to make,
which matters for a million files); they are written with os.open/os.write
and futimens relative to a directory fd, one directory at a time.

Mutation (the "1% changed" case)
  small  1% of the files (at least one), chosen by the seed: every other one
         keeps its size, the rest get a new size; all get new content.
  large  1 MiB at an unaligned offset in the middle of the first file is
         overwritten with new content (the size is unchanged).
  many   like small: 1% of the files, every other one keeps its size, the
         rest get a new size in 1..1024; all get new content.
         (million has no mutation: the harness runs only initial and no change.)
  `mutate --restore` writes the baseline content back. Both set the mtime of
  the files they touch to --mtime (default: now), so that callers can make
  mtimes strictly increasing across restore/mutate rounds.
  `mutate` prints the relative paths it touched, one per line.

Usage
  gen_tree.py small  DIR [--files N] [--total-mb MB] [--seed S]
  gen_tree.py large  DIR [--count K] [--size-mib S] [--seed S]
  gen_tree.py many   DIR [--files N] [--dirs D] [--seed S]
  gen_tree.py million DIR [--files N] [--dirs D] [--seed S]
  gen_tree.py mutate small DIR [--files N] [--total-mb MB] [--seed S]
                     [--fraction F] [--restore] [--mtime T]
  gen_tree.py mutate large DIR [--count K] [--size-mib S] [--seed S]
                     [--restore] [--mtime T]
  gen_tree.py mutate many DIR [--files N] [--dirs D] [--seed S]
                     [--fraction F] [--restore] [--mtime T]
"""

import hashlib

import argparse
import math
import os
import random
import sys
import time

MIB = 1 << 20
KIB = 1 << 10
# Baseline mtime of generated files (2023-11-14T22:13:20Z) plus a per-file offset.
BASE_MTIME = 1_700_000_000
MAX_SMALL = 1 * MIB
MEDIAN_SMALL = 4 * KIB
DIR_FANOUT = (10, 4, 4)  # 10 + 40 + 160 = 210 directories
MAX_NESTED = 1 * KIB  # many/million file sizes are uniform in [0, MAX_NESTED]
NESTED_DEFAULTS = {"many": (200_000, 60_000), "million": (1_000_000, 300_000)}
EXTS = ["dat", "txt", "bin", "json", "log", "c", "rs", "md"]


# ---------------------------------------------------------------- tree specs


def small_spec(files, total_mb, seed):
    """Return [(relpath, size, mtime)] for the small tree."""
    if total_mb is None:
        total_mb = files * 5e-3
    rng = random.Random(f"filesync-bench:{seed}:small:layout")
    # Log-normal with the given median; sigma chosen so that the mean size
    # gives the requested total (mean = median * exp(sigma^2 / 2)).
    mean = max(total_mb * 1e6 / files, MEDIAN_SMALL * 1.0001)
    sigma = math.sqrt(2.0 * math.log(mean / MEDIAN_SMALL))
    mu = math.log(MEDIAN_SMALL)

    dirs = []
    for a in range(DIR_FANOUT[0]):
        top = f"d{a:02d}"
        dirs.append(top)
        for b in range(DIR_FANOUT[1]):
            mid = f"{top}/sub{b}"
            dirs.append(mid)
            for c in range(DIR_FANOUT[2]):
                dirs.append(f"{mid}/leaf{c}")

    exts = ["dat", "txt", "bin", "json", "log", "c", "rs", "md"]
    spec = []
    for i in range(files):
        d = dirs[rng.randrange(len(dirs))]
        size = int(rng.lognormvariate(mu, sigma))
        size = max(0, min(MAX_SMALL, size))
        if i % 1000 == 7:  # a few empty files
            size = 0
        name = f"file_{i:05d}.{exts[rng.randrange(len(exts))]}"
        spec.append((f"{d}/{name}", size, BASE_MTIME + i))
    return spec


def nested_spec(tree, files, dirs, seed):
    """Return (dirs, spec) for the many/million trees.

    dirs is a list of relative directory paths, every parent before its
    children; spec is [(dir index, file name, size, mtime)], file i at index i.
    """
    rng = random.Random(f"filesync-bench:{seed}:{tree}:layout")
    if dirs < 4:
        raise ValueError("need at least 4 directories")
    n1 = max(1, round(dirs / 1500))
    n2 = max(1, round(dirs / 60))
    n3 = max(1, round(dirs / 4))
    n4 = dirs - n1 - n2 - n3
    if n4 < 1:
        raise ValueError("too few directories for four levels")
    paths = []
    prev = []  # (start index in paths, count) of the previous level
    has_child = []
    for level, (count, letter) in enumerate(zip((n1, n2, n3, n4), "abcd")):
        width = max(3, len(str(count - 1)))
        start = len(paths)
        for j in range(count):
            name = f"{letter}{j:0{width}d}"
            if level == 0:
                paths.append(name)
            else:
                pstart, pcount = prev
                # Every parent gets at least one child; the rest are placed at random.
                p = pstart + (j if j < pcount else rng.randrange(pcount))
                has_child[p] = True
                paths.append(f"{paths[p]}/{name}")
            has_child.append(False)
        prev = (start, count)
    l3 = n1 + n2  # first level-3 index; levels 3 and 4 are paths[l3:]
    leaves = [d for d in range(l3, len(paths)) if not has_child[d]]
    if files < len(leaves):
        raise ValueError(f"need at least {len(leaves)} files, one for each leaf directory")
    where = leaves + [l3 + rng.randrange(len(paths) - l3) for _ in range(files - len(leaves))]
    rng.shuffle(where)
    spec = []
    for i, d in enumerate(where):
        name = f"f{i:07d}.{EXTS[rng.randrange(len(EXTS))]}"
        spec.append((d, name, rng.randrange(MAX_NESTED + 1), BASE_MTIME + i))
    return paths, spec


def large_spec(count, size_mib, seed):
    return [(f"large_{i}.bin", size_mib * MIB, BASE_MTIME + i) for i in range(count)]


# ------------------------------------------------------------------- content


def small_content(seed, index, size, variant):
    """Content of small file `index` in `variant` (0 = baseline, 1 = mutated)."""
    return random.Random(f"filesync-bench:{seed}:small:{index}:{variant}").randbytes(size)


def large_chunk(seed, index, chunk, length=MIB):
    """Baseline content of 1 MiB chunk `chunk` of large file `index`."""
    return random.Random(f"filesync-bench:{seed}:large:{index}:{chunk}").randbytes(length)


def nested_content(tree, seed, index, size, variant):
    """Content of file `index` of the many/million tree (0 = baseline, 1 = mutated)."""
    return hashlib.shake_128(f"filesync-bench:{seed}:{tree}:{index}:{variant}".encode()).digest(size)


def write_file(path, data, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


# ---------------------------------------------------------------- generation


def gen_small(root, files, total_mb, seed):
    spec = small_spec(files, total_mb, seed)
    made = set()
    total = 0
    for i, (rel, size, mtime) in enumerate(spec):
        parent = os.path.dirname(rel)
        if parent not in made:
            os.makedirs(os.path.join(root, parent), exist_ok=True)
            made.add(parent)
        write_file(os.path.join(root, rel), small_content(seed, i, size, 0), mtime)
        total += size
    sizes = sorted(s for _, s, _ in spec)
    print(
        f"small tree: {len(spec)} files, {total} bytes ({total / 1e6:.1f} MB), "
        f"median {sizes[len(sizes) // 2]} B, max {sizes[-1]} B, "
        f"{sum(1 for s in sizes if s == 0)} empty, {len(made)} directories holding files",
        file=sys.stderr,
    )


def gen_nested(tree, root, files, dirs, seed):
    paths, spec = nested_spec(tree, files, dirs, seed)
    os.makedirs(root, exist_ok=True)
    for p in paths:  # parents come first
        os.mkdir(os.path.join(root, p))
    by_dir = [[] for _ in paths]
    for i, f in enumerate(spec):
        by_dir[f[0]].append(i)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    total = 0
    for d, members in enumerate(by_dir):
        if not members:
            continue
        dfd = os.open(os.path.join(root, paths[d]), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i in members:
                _, name, size, mtime = spec[i]
                data = nested_content(tree, seed, i, size, 0)
                fd = os.open(name, flags, 0o666, dir_fd=dfd)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)
                total += size
        finally:
            os.close(dfd)
    depth3 = sum(1 for f in spec if paths[f[0]].count("/") == 2)
    print(
        f"{tree} tree: {len(spec)} files, {total} bytes ({total / 1e6:.1f} MB), sizes uniform 0..{MAX_NESTED} B, "
        f"{sum(1 for f in spec if f[2] == 0)} empty, {len(paths)} directories 4 levels deep "
        f"({len(spec) - depth3} files on level 4, {depth3} on level 3)",
        file=sys.stderr,
    )


def gen_large(root, count, size_mib, seed):
    os.makedirs(root, exist_ok=True)
    for i, (rel, size, mtime) in enumerate(large_spec(count, size_mib, seed)):
        path = os.path.join(root, rel)
        with open(path, "wb") as f:
            for c in range(size // MIB):
                f.write(large_chunk(seed, i, c))
        os.utime(path, (mtime, mtime))
    print(f"large tree: {count} files of {size_mib} MiB", file=sys.stderr)


# ------------------------------------------------------------------ mutation


def mutate_small(root, files, total_mb, seed, fraction, restore, mtime):
    spec = small_spec(files, total_mb, seed)
    rng = random.Random(f"filesync-bench:{seed}:small:mutate")
    k = max(1, round(len(spec) * fraction))
    chosen = sorted(rng.sample(range(len(spec)), k))
    touched = []
    for n, i in enumerate(chosen):
        rel, size, _ = spec[i]
        if restore:
            data = small_content(seed, i, size, 0)
        else:
            if n % 2 == 0:
                new_size = size  # same size, new content
            else:
                r = random.Random(f"filesync-bench:{seed}:small:{i}:newsize")
                new_size = max(1, min(MAX_SMALL, int(r.lognormvariate(math.log(MEDIAN_SMALL), 0.7))))
                if new_size == size:
                    new_size += 1
            data = small_content(seed, i, new_size, 1)
        write_file(os.path.join(root, rel), data, mtime)
        touched.append(rel)
    return touched


def mutate_nested(tree, root, files, dirs, seed, fraction, restore, mtime):
    paths, spec = nested_spec(tree, files, dirs, seed)
    rng = random.Random(f"filesync-bench:{seed}:{tree}:mutate")
    k = max(1, round(len(spec) * fraction))
    chosen = sorted(rng.sample(range(len(spec)), k))
    touched = []
    for n, i in enumerate(chosen):
        d, name, size, _ = spec[i]
        rel = f"{paths[d]}/{name}"
        if restore:
            data = nested_content(tree, seed, i, size, 0)
        else:
            if n % 2 == 0:
                new_size = size  # same size, new content
            else:
                new_size = random.Random(f"filesync-bench:{seed}:{tree}:{i}:newsize").randrange(1, MAX_NESTED + 1)
                if new_size == size:
                    new_size = new_size % MAX_NESTED + 1
            data = nested_content(tree, seed, i, new_size, 1)
        write_file(os.path.join(root, rel), data, mtime)
        touched.append(rel)
    return touched


def large_mutation_range(count, size_mib, seed):
    rng = random.Random(f"filesync-bench:{seed}:large:mutate")
    size = size_mib * MIB
    # Unaligned offset within the middle half of the first file.
    off = rng.randrange(size // 4, size * 3 // 4 - MIB)
    off |= 1  # never 2-aligned, let alone block-aligned
    return 0, off, MIB


def mutate_large(root, count, size_mib, seed, restore, mtime):
    index, off, length = large_mutation_range(count, size_mib, seed)
    rel = large_spec(count, size_mib, seed)[index][0]
    path = os.path.join(root, rel)
    with open(path, "r+b") as f:
        if restore:
            first, last = off // MIB, (off + length - 1) // MIB
            base = b"".join(large_chunk(seed, index, c) for c in range(first, last + 1))
            start = off - first * MIB
            data = base[start : start + length]
        else:
            data = random.Random(f"filesync-bench:{seed}:large:{index}:mutated").randbytes(length)
        f.seek(off)
        f.write(data)
    os.utime(path, (mtime, mtime))
    return [rel]


# ----------------------------------------------------------------------- CLI


def add_small_args(p):
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument(
        "--total-mb", type=float, default=None, help="target total size in MB (10^6 bytes; default: 5 KB per file)"
    )
    p.add_argument("--seed", default="42")


def add_large_args(p):
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--size-mib", type=int, default=512)
    p.add_argument("--seed", default="42")


def add_nested_args(p, tree):
    files, dirs = NESTED_DEFAULTS[tree]
    p.add_argument("dir")
    p.add_argument("--files", type=int, default=files)
    p.add_argument("--dirs", type=int, default=dirs)
    p.add_argument("--seed", default="42")


def add_mutate_args(p):
    p.add_argument("--restore", action="store_true", help="write the baseline content back")
    p.add_argument("--mtime", type=int, default=None, help="mtime to give touched files (default: now)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_small_args(sub.add_parser("small", help="generate the many-small-files tree"))
    add_large_args(sub.add_parser("large", help="generate the few-large-files tree"))
    add_nested_args(sub.add_parser("many", help="generate the 200,000-tiny-files tree"), "many")
    add_nested_args(sub.add_parser("million", help="generate the 1,000,000-tiny-files tree"), "million")
    mut = sub.add_parser("mutate", help="apply (or undo with --restore) the deterministic change")
    msub = mut.add_subparsers(dest="tree", required=True)
    ms = msub.add_parser("small")
    add_small_args(ms)
    add_mutate_args(ms)
    ms.add_argument("--fraction", type=float, default=0.01)
    ml = msub.add_parser("large")
    add_large_args(ml)
    add_mutate_args(ml)
    mm = msub.add_parser("many")
    add_nested_args(mm, "many")
    add_mutate_args(mm)
    mm.add_argument("--fraction", type=float, default=0.01)
    a = ap.parse_args(argv)

    t0 = time.monotonic()
    if a.cmd == "small":
        if os.path.exists(a.dir) and os.listdir(a.dir):
            ap.error(f"{a.dir} exists and is not empty")
        gen_small(a.dir, a.files, a.total_mb, a.seed)
    elif a.cmd == "large":
        if os.path.exists(a.dir) and os.listdir(a.dir):
            ap.error(f"{a.dir} exists and is not empty")
        gen_large(a.dir, a.count, a.size_mib, a.seed)
    elif a.cmd in NESTED_DEFAULTS:
        if os.path.exists(a.dir) and os.listdir(a.dir):
            ap.error(f"{a.dir} exists and is not empty")
        gen_nested(a.cmd, a.dir, a.files, a.dirs, a.seed)
    else:
        mtime = a.mtime if a.mtime is not None else int(time.time())
        if a.tree == "small":
            touched = mutate_small(a.dir, a.files, a.total_mb, a.seed, a.fraction, a.restore, mtime)
        elif a.tree == "many":
            touched = mutate_nested("many", a.dir, a.files, a.dirs, a.seed, a.fraction, a.restore, mtime)
        else:
            touched = mutate_large(a.dir, a.count, a.size_mib, a.seed, a.restore, mtime)
        sys.stdout.write("".join(t + "\n" for t in touched))
        return 0
    print(f"generated in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
