#!/usr/bin/env python3
"""Import circles between sibling modules of a Rust crate (run by .ci/run).

Every file is a module path (src/server/hub.rs -> server::hub). Every
`crate::a::b`, `super::x` or `self::x` path in code (comments stripped)
becomes an edge to the deepest module it names. For each pair of sibling
modules (same parent) an edge A -> B exists when anything under A refers
to anything under B. A parent and its own children may refer to each
other (that is one subsystem); siblings must form a DAG. Prints the
sibling-level edges and any cycle, exit 1 if there is one."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[0] == 'bin': continue
        if rel[-1] in ('mod', 'lib'): rel = rel[:-1]
        mods[tuple(rel)] = p
def strip(s):
    s = re.sub(r'//[^\n]*', '', s)
    s = re.sub(r'"(\\.|[^"\\])*"', '""', s)
    return s
def resolve(cur, path):
    parts = path.split('::')
    if parts[0] == 'crate': base = []; parts = parts[1:]
    elif parts[0] == 'super':
        base = list(cur)
        while parts and parts[0] == 'super': base = base[:-1]; parts = parts[1:]
    elif parts[0] == 'self': base = list(cur); parts = parts[1:]
    else: return None
    best = tuple(base)
    for i in range(len(parts)):
        cand = tuple(base + parts[:i+1])
        if cand in mods: best = cand
        else: break
    return best
edges = set()
for m, p in mods.items():
    code = strip(open(p).read())
    # expand `use a::{b, c::{d}}` roughly: take every path-like token
    for use in re.findall(r'\buse\s+([^;]+);', code):
        flat = []
        def expand(prefix, body):
            body = body.strip()
            mm = re.match(r'^([\w:]*?)::?\{(.*)\}$', body, re.S)
            if mm:
                inner = mm.group(2); pre = (prefix + '::' if prefix else '') + mm.group(1).rstrip(':')
                depth = 0; cur = ''
                for ch in inner:
                    if ch == '{': depth += 1
                    if ch == '}': depth -= 1
                    if ch == ',' and depth == 0: expand(pre, cur); cur = ''
                    else: cur += ch
                if cur.strip(): expand(pre, cur)
            else:
                name = body.split(' as ')[0].strip()
                if name: flat.append((prefix + '::' + name) if prefix else name)
        expand('', use)
        for f in flat:
            t = resolve(m, f.replace('::self', ''))
            if t is not None: edges.add((m, t))
    for f in re.findall(r'\b((?:crate|super)(?:::\w+)+)', code):
        t = resolve(m, f)
        if t is not None: edges.add((m, t))
# sibling-level edges
sib = set()
for a, b in edges:
    # common prefix
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]: i += 1
    if i == len(a) or i == len(b): continue  # ancestor/descendant
    sa, sb = a[:i+1], b[:i+1]
    sib.add((sa, sb))
name = lambda t: '::'.join(t) or 'crate'
graph = {}
for a, b in sorted(sib): graph.setdefault(a, set()).add(b)
for a, b in sorted(sib): print(f'{name(a)} -> {name(b)}')
# cycles
cycles = []
def dfs(n, stack, seen):
    for m in graph.get(n, ()):
        if m in stack: cycles.append(stack[stack.index(m):] + [m])
        elif m not in seen: seen.add(m); dfs(m, stack + [m], seen)
for n in list(graph): dfs(n, [n], {n})
uniq = {tuple(sorted(c[:-1])): c for c in cycles}
for c in uniq.values(): print('CYCLE:', ' -> '.join(name(x) for x in c))
print(f'{len(mods)} modules, {len(sib)} sibling edges, {len(uniq)} cycles')
sys.exit(1 if uniq else 0)
