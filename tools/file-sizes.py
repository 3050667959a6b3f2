#!/usr/bin/env python3
"""Source files over the size limits of issue 18: more than LIMIT lines of non-test code, or an
inline `#[cfg(test)] mod tests { ... }` longer than TEST_LIMIT lines (which belongs in its own
file). Usage: tools/file-sizes.py <dir> [<dir> ...]; exits 1 when a file is over a limit."""
import os, re, sys

LIMIT, TEST_LIMIT = 600, 150

def inline_test_module(text):
    m = re.search(r'^#\[cfg\(test\)\]\s*\n\s*mod tests \{', text, re.M)
    if not m:
        return None, 0
    start = text.count("\n", 0, m.start())
    depth, i = 0, m.end() - 1
    for i in range(m.end() - 1, len(text)):
        if text[i] == "{": depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0: break
    return start, text.count("\n", m.start(), i) + 1

over = False
for root in sys.argv[1:]:
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if not f.endswith(".rs") or f == "tests.rs" or "/tests" in dirpath.replace(root, ""):
                continue
            path = os.path.join(dirpath, f)
            text = open(path).read()
            start, test_len = inline_test_module(text)
            total = text.count("\n")
            code = total - test_len
            if code > LIMIT or test_len > TEST_LIMIT:
                over = True
                print(f"{path}: {code} lines of code, inline tests {test_len}")
print("all files within limits" if not over else "")
sys.exit(1 if over else 0)
