#!/usr/bin/env python3
"""Static checks of the chart's values (standard library only; no YAML parser needed).

  check_values.py schema CHART   every object in values.schema.json is closed: additionalProperties
                                 is false, or a schema for the values of a map (labels, resources)
  check_values.py comments CHART every key in values.yaml has a comment line right above it, except
                                 the fields inside a Kubernetes-typed block (securityContext,
                                 resources, probes) whose block is commented as a whole
Exit status 1 with one line per offence.
"""
import json
import re
import sys
from pathlib import Path

# Blocks whose inner keys are Kubernetes API fields, documented by the block's own comment.
K8S_TYPED_BLOCKS = {"podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe"}
# Helm's own convention: a parent chart's globals; deliberately open.
OPEN_ON_PURPOSE = {"/properties/global"}


def schema_offences(node, path="", root=None):
    root = root if root is not None else node
    out = []
    if isinstance(node, dict):
        is_object = node.get("type") == "object" or "properties" in node
        if is_object and path not in OPEN_ON_PURPOSE:
            ap = node.get("additionalProperties", None)
            if ap is None or ap is True:
                out.append(f"{path or '/'}: object without additionalProperties: false")
            elif ap is not False and "properties" in node:
                out.append(f"{path}: fixed properties and an open additionalProperties")
        for k, v in node.items():
            if path + "/" + k in OPEN_ON_PURPOSE:
                continue
            out += schema_offences(v, f"{path}/{k}", root)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += schema_offences(v, f"{path}/{i}", root)
    return out


KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")


def comment_offences(text):
    out = []
    lines = text.splitlines()
    stack = []  # (indent, key)
    for n, line in enumerate(lines):
        m = KEY.match(line)
        if not m or line.lstrip().startswith("#") or line.lstrip().startswith("-"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if any(p in K8S_TYPED_BLOCKS for p in parents):
            continue
        prev = lines[n - 1].strip() if n > 0 else ""
        is_map_header = line.rstrip().endswith(":")
        if prev.startswith("#"):
            continue
        if is_map_header:
            # A group header (crds:, image:, metrics:) needs no comment of its own when every key
            # in it has one; those are checked on their own lines.
            continue
        out.append(f"values.yaml:{n + 1}: '{'.'.join(parents + [key])}' has no comment above it")
    return out


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("schema", "comments"):
        print(__doc__, file=sys.stderr)
        return 2
    chart = Path(sys.argv[2])
    if sys.argv[1] == "schema":
        offences = schema_offences(json.loads((chart / "values.schema.json").read_text()))
    else:
        offences = comment_offences((chart / "values.yaml").read_text())
    for o in offences:
        print(o)
    return 1 if offences else 0


if __name__ == "__main__":
    sys.exit(main())
