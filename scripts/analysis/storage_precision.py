"""Rounding error of storing a collection's checkpoints in f16 or bf16, against the spread of each
task's checkpoints (the signal the generator learns), element-wise, on a fixed subsample (every 23rd
tensor, 400 elements of each). Pure Python, no dependencies.

    python3 scripts/analysis/storage_precision.py [COLLECTION_DIR] > results/collect/storage-precision.json
"""
import json, struct, sys, os, glob, math, random
coll = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get('DND_CACHE', os.path.expanduser('~/.cache/dnd')), 'collections', 'commonsense')
def read(path, names=None):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8+n]); base = 8 + n
    out = {}
    for k, v in h.items():
        if k == '__metadata__' or (names is not None and k not in names): continue
        s, e = v['data_offsets']
        out[k] = struct.unpack('<%df' % ((e - s) // 4), b[base+s:base+e])
    return out
def f16(x): return struct.unpack('<e', struct.pack('<e', x))[0]
def bf16(x):
    i = struct.unpack('<I', struct.pack('<f', x))[0]
    i = ((i + 0x7FFF + ((i >> 16) & 1)) >> 16) << 16
    return struct.unpack('<f', struct.pack('<I', i))[0]
random.seed(0)
rows = []
for task in sorted(os.listdir(coll)):
    ck = sorted(glob.glob(f'{coll}/{task}/checkpoints/step-*/adapter_model.safetensors'))
    if not ck: continue
    first = read(ck[0])
    names = sorted(first)[::23]  # a fixed subsample of tensors
    data = [read(c, set(names)) for c in ck]
    se = [0.0, 0.0, 0.0]; cnt = 0
    for name in names:
        vals = [d[name] for d in data]
        idx = random.sample(range(len(vals[0])), min(400, len(vals[0])))
        for i in idx:
            xs = [v[i] for v in vals]
            m = sum(xs) / len(xs)
            var = sum((x - m) ** 2 for x in xs) / len(xs)
            e16 = sum((f16(x) - x) ** 2 for x in xs) / len(xs)
            eb = sum((bf16(x) - x) ** 2 for x in xs) / len(xs)
            se[0] += var; se[1] += e16; se[2] += eb; cnt += 1
    rows.append((task, math.sqrt(se[0]/cnt), math.sqrt(se[1]/cnt), math.sqrt(se[2]/cnt), cnt))
    print(*rows[-1], file=sys.stderr, flush=True)
json.dump([dict(task=t, spread_rms=s, f16_err_rms=a, bf16_err_rms=b, elements=c) for t, s, a, b, c in rows],
          sys.stdout, indent=1)
print()
