#!/usr/bin/env python3
"""Lines of berth's production Rust files: p50, p90 and the largest.

    scripts/file-sizes.py [--list N] [--over LINES]

Production means what ships in a crate: the end-to-end tests, benchmarks, fuzz targets and
build scripts are left out, and so are unit tests, whether in files of their own (tests.rs,
*_tests.rs, tests/) or in a file's trailing `#[cfg(test)] mod tests { ... }` block.
"""
import argparse
import os
import sys

CRATES = ["agent", "cri-api", "image", "imgcrypt", "lazy", "network", "sandbox", "shim", "stream"]


def production_lines(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    # A trailing test module: from its `#[cfg(test)]` to the end of the file.
    for i, l in enumerate(lines):
        if l.strip() == "#[cfg(test)]" and i + 1 < len(lines) and lines[i + 1].startswith("mod "):
            if lines[i + 1].rstrip().endswith("{"):
                return i
    return len(lines)


def files(root):
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        for d, _, names in os.walk(src):
            for n in names:
                if not n.endswith(".rs") or n == "tests.rs" or n.endswith("_tests.rs"):
                    continue
                p = os.path.join(d, n)
                yield os.path.relpath(p, root), production_lines(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", type=int, default=10, help="show the N largest files")
    ap.add_argument("--over", type=int, default=0, help="exit 1 if a file has more lines")
    a = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    sizes = sorted(files(root), key=lambda f: f[1])
    n = [s for _, s in sizes]
    pct = lambda p: n[min(len(n) - 1, int(len(n) * p))]
    print(f"{len(n)} files: p50 {pct(0.5)}, p90 {pct(0.9)}, max {n[-1]}")
    for path, lines in reversed(sizes[-a.list:]):
        print(f"  {lines:5} {path}")
    if a.over and n[-1] > a.over:
        sys.exit(1)


if __name__ == "__main__":
    main()
