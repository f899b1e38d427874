"""Regenerates the x87 soft-float test vectors (see README.md)."""
import random
from mpmath import mp, mpf, ldexp, floor, ceil, nint, sqrt

MODES = ['n', 'f', 'c', 'd']  # nearest, down, up, toward zero


def val(s, e, sig):
    v = ldexp(mpf(sig), e - 63)
    return -v if s else v


def rint(x, mode):
    if mode == 0:
        return int(nint(x))
    if mode == 1:
        return int(floor(x))
    if mode == 2:
        return int(ceil(x))
    return int(floor(x)) if x >= 0 else int(ceil(x))


def round_fmt(r, mode, prec, emin, emax):
    """Rounds r: ('inf', sign) or (sign, exponent, integer significand)."""
    if r == 0:
        return (False, emin, 0)
    s = r < 0
    a = abs(r)
    e = int(floor(mp.log(a, 2)))
    while ldexp(mpf(1), e) > a:
        e -= 1
    while ldexp(mpf(1), e + 1) <= a:
        e += 1
    q = max(e, emin)
    am = abs(rint(ldexp(r, (prec - 1) - q), mode))
    if am >= (1 << prec):
        am >>= 1
        q += 1
    if q > emax:
        if mode == 0 or (mode == 1 and s) or (mode == 2 and not s):
            return ('inf', s)
        return (s, emax, (1 << prec) - 1)
    return (s, q, am)


def ext64():
    random.seed(87)
    mp.prec = 600

    def rnd():
        sig = random.getrandbits(64) | (1 << 63)
        r = random.random()
        if r < 0.15:
            sig = (1 << 63) | random.getrandbits(8)
        elif r < 0.3:
            sig = (1 << 64) - 1 - random.getrandbits(8)
        return random.random() < 0.5, random.randint(-200, 200), sig

    def bits(v):
        if v == 0:
            return 0, 0
        s = v < 0
        m, ex = mp.frexp(abs(v))
        return (s << 15) | (ex - 1 + 16383), int(ldexp(m, 64))

    lines = []
    for op in ['add', 'sub', 'mul', 'div', 'sqrt']:
        for _ in range(240):
            a, b = rnd(), rnd()
            if op == 'sqrt':
                a = (False, a[1], a[2])
            if op in ('add', 'sub') and random.random() < 0.5:
                b = (b[0], a[1] + random.randint(-70, 3), b[2])
            mode = random.randrange(4)
            name = MODES[mode]
            A, B = val(*a), val(*b)
            if op == 'sqrt':
                r = mp.fadd(sqrt(A), 0, prec=64, rounding=name)
            else:
                f = {'add': mp.fadd, 'sub': mp.fsub, 'mul': mp.fmul, 'div': mp.fdiv}[op]
                r = f(A, B, prec=64, rounding=name)
            se, sig = bits(r)
            ea = (a[0] << 15) | (a[1] + 16383)
            eb = (b[0] << 15) | (b[1] + 16383)
            lines.append(f"{op} {mode} {ea:04x} {a[2]:016x} {eb:04x} {b[2]:016x} {se:04x} {sig:016x}")
    open('ext64.txt', 'w').write("\n".join(lines) + "\n")


def ext_pc_and_binary():
    random.seed(1987)
    mp.prec = 600

    def rsig():
        return random.getrandbits(64) | (1 << 63)

    def enc(x):
        s, e, sig = x
        if e < -16382:
            sh = -16382 - e
            return ((s << 15), sig >> sh) if (sig >> sh) << sh == sig else None
        return ((s << 15) | (e + 16383), sig)

    lines = []
    for _ in range(400):
        op = random.choice(['mul', 'div', 'add'])
        mode = random.randint(0, 3)
        prec = random.choice([24, 53, 64])
        if random.random() < 0.4:
            ea = random.randint(-8300, -8150)
            eb = random.randint(-8300, -8150)
            if op == 'div':
                eb = -ea + random.randint(-20, 140)
            if op == 'add':
                ea = random.randint(-16445, -16380)
                eb = ea + random.randint(-3, 3)
        else:
            ea = random.randint(-6000, 6000)
            eb = random.randint(-6000, 6000)
            if op == 'add':
                eb = ea + random.randint(-60, 2)
        a = (random.random() < 0.5, ea, rsig())
        b = (random.random() < 0.5, eb, rsig())
        A, B = val(*a), val(*b)
        r = A * B if op == 'mul' else (A / B if op == 'div' else A + B)
        res = round_fmt(r, mode, prec, -16382, 16383)
        ea_, eb_ = enc(a), enc(b)
        if ea_ is None or eb_ is None:
            continue
        if res[0] == 'inf':
            se, sig = (res[1] << 15) | 0x7FFF, 1 << 63
        else:
            s, q, m = res
            sig = m << (64 - prec)
            se = (s << 15) | (q + 16383) if sig >> 63 else (s << 15)
        pc = {24: 0, 53: 2, 64: 3}[prec]
        lines.append(f"{op} {mode} {pc} {ea_[0]:04x} {ea_[1]:016x} {eb_[0]:04x} {eb_[1]:016x} {se:04x} {sig:016x}")
    open('ext_pc.txt', 'w').write("\n".join(lines) + "\n")

    lines = []
    for _ in range(400):
        mode = random.randint(0, 3)
        dbl = random.random() < 0.5
        emin, emax, prec = (-1022, 1023, 53) if dbl else (-126, 127, 24)
        k = random.random()
        if k < 0.4:
            e = random.randint(emin - prec - 2, emin + 1)
        elif k < 0.6:
            e = random.randint(emax - 1, emax + 1)
        else:
            e = random.randint(emin, emax)
        sig = rsig() if random.random() < 0.8 else (1 << 63) | (random.getrandbits(3) << (63 - prec))
        a = (random.random() < 0.5, e, sig)
        res = round_fmt(val(*a), mode, prec, emin, emax)
        ebits = 11 if dbl else 8
        fb = prec - 1
        bias = (1 << (ebits - 1)) - 1
        if res[0] == 'inf':
            bits = (res[1] << (ebits + fb)) | (((1 << ebits) - 1) << fb)
        else:
            s, q, m = res
            if m >> fb:
                bits = (s << (ebits + fb)) | ((q + bias) << fb) | (m & ((1 << fb) - 1))
            else:
                bits = (s << (ebits + fb)) | m
        se = (a[0] << 15) | (a[1] + 16383)
        lines.append(f"{'f64' if dbl else 'f32'} {mode} {se:04x} {a[2]:016x} {bits:016x}")
    open('to_binary.txt', 'w').write("\n".join(lines) + "\n")


def transcendental():
    """`fn x.se x.sig y.se y.sig r.se r.sig`: correctly rounded (nearest)
    results of the transcendental instructions, for a 1-ulp check."""
    random.seed(2024)
    mp.prec = 800

    def enc(v):
        s = v < 0
        m, ex = mp.frexp(abs(v))
        sig = int(nint(ldexp(m, 64)))
        if sig >> 64:
            sig >>= 1
            ex += 1
        return (s << 15) | (ex - 1 + 16383), sig

    def rnd(lo, hi, neg=True):
        e = random.randint(lo, hi)
        s = neg and random.random() < 0.5
        return val(s, e, random.getrandbits(64) | (1 << 63))

    lines = []
    one = mpf(1)
    for _ in range(120):
        x = rnd(-30, 62)
        lines.append(('sin', x, one, mp.sin(x)))
        x = rnd(-30, 62)
        lines.append(('cos', x, one, mp.cos(x)))
        x = rnd(-30, 40)
        lines.append(('tan', x, one, mp.tan(x)))
        y, x = rnd(-40, 40), rnd(-40, 40)
        lines.append(('atan', x, y, mp.atan2(y, x)))
        x, y = rnd(-16000, 16000, False), rnd(-5, 5)
        lines.append(('yl2x', x, y, y * mp.log(x, 2)))
        x, y = rnd(-60, -2), rnd(-5, 5)
        lines.append(('yl2xp1', x, y, y * mp.log(1 + x, 2)))
        x = rnd(-60, -1)
        lines.append(('f2xm1', x, one, mp.power(2, x) - 1))
    out = []
    for f, x, y, r in lines:
        xs, xm = enc(x)
        ys, ym = enc(y)
        rs, rm = enc(r)
        out.append(f"{f} {xs:04x} {xm:016x} {ys:04x} {ym:016x} {rs:04x} {rm:016x}")
    open('trans.txt', 'w').write("\n".join(out) + "\n")


if __name__ == '__main__':
    ext64()
    ext_pc_and_binary()
    transcendental()
