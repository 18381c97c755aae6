"""A second implementation of the fusion metrics in plain NumPy/SciPy, written the way the field's evaluator is (2-D
direct convolutions, `uniform_filter`, `np.gradient`), to cross-check `sfofusion.metrics` (tests/test_metrics.py) and
to time against it (bench/bench_metrics.py). Needs SciPy (in the `dev` extra)."""
import numpy as np


def numpy_metrics(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    "The same formulas in plain NumPy/SciPy on (H, W) float32 grey levels (the evaluator's style), one function per metric."
    from scipy.signal import convolve2d
    from scipy.ndimage import uniform_filter

    def en(x):
        p = np.bincount(np.round(x).astype(np.uint8).ravel(), minlength=256) / x.size
        return -np.sum(p[p > 0] * np.log2(p[p > 0]))
    def sf(x): return np.sqrt(np.mean(np.diff(x, axis=1) ** 2) + np.mean(np.diff(x, axis=0) ** 2))
    def ag(x):
        gy, gx = np.gradient(x)
        return np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2))
    def mi(x, y):
        j = np.bincount((x.astype(np.int64) * 256 + y.astype(np.int64)).ravel(), minlength=65536).reshape(256, 256) / x.size
        px, py = j.sum(1, keepdims=True), j.sum(0, keepdims=True)
        nz = j > 0
        return max(np.sum(j[nz] * np.log(j[nz] / (px @ py)[nz])), 0.)
    def corr(x, y):
        x, y = x - x.mean(), y - y.mean()
        return np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y))
    def vif(ref, dist):
        num = den = 0.
        for scale, n in enumerate((17, 9, 5, 3)):
            r = np.arange(n) - (n - 1) / 2
            win = np.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * (n / 5) ** 2)); win /= win.sum()
            if scale:
                ref, dist = convolve2d(ref, win, 'valid')[::2, ::2], convolve2d(dist, win, 'valid')[::2, ::2]
            mu1, mu2 = convolve2d(ref, win, 'valid'), convolve2d(dist, win, 'valid')
            s1 = np.maximum(convolve2d(ref * ref, win, 'valid') - mu1 ** 2, 0)
            s2 = np.maximum(convolve2d(dist * dist, win, 'valid') - mu2 ** 2, 0)
            s12 = convolve2d(ref * dist, win, 'valid') - mu1 * mu2
            g = s12 / (s1 + 1e-10); sv = s2 - g * s12
            fr, fd = s1 < 1e-10, s2 < 1e-10
            g[fr | fd] = 0; sv[fr] = s2[fr]; sv[fd] = 0; s1[fr] = 0
            sv[g < 0] = s2[g < 0]; g[g < 0] = 0; sv = np.maximum(sv, 1e-10)
            num += np.sum(np.log10(1 + g * g * s1 / (sv + 2))); den += np.sum(np.log10(1 + s1 / 2))
        return 1. if den == 0 and num == 0 else num / den
    def qabf(f, a, b):
        kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
        ky = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)
        def grad(x):
            sx, sy = convolve2d(x, kx, 'same'), convolve2d(x, ky, 'same')
            with np.errstate(divide='ignore', invalid='ignore'):
                return np.sqrt(sx * sx + sy * sy), np.where(sx == 0, np.pi / 2, np.arctan(sy / sx))
        def q(ga, aa, gf, af):
            with np.errstate(divide='ignore', invalid='ignore'):
                G = np.where(ga == gf, gf, np.minimum(ga, gf) / np.maximum(ga, gf))
            A = 1 - np.abs(aa - af) / (np.pi / 2)
            return 0.9994 / (1 + np.exp(-15 * (G - 0.5))) * 0.9879 / (1 + np.exp(-22 * (A - 0.8)))
        (ga, aa), (gb, ab), (gf, af) = grad(a), grad(b), grad(f)
        return np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb)
    def ssim(x, y, dr):
        ux, uy = uniform_filter(x, 7), uniform_filter(y, 7)
        vx = 49 / 48 * (uniform_filter(x * x, 7) - ux * ux); vy = 49 / 48 * (uniform_filter(y * y, 7) - uy * uy)
        vxy = 49 / 48 * (uniform_filter(x * y, 7) - ux * uy)
        c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
        s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        return s[3:-3, 3:-3].mean(dtype=np.float64)
    def mse(): return (np.mean((f - a) ** 2) + np.mean((f - b) ** 2)) / 2
    return dict(
        EN=lambda: en(f), SD=lambda: np.std(f), SF=lambda: sf(f), AG=lambda: ag(f), MI=lambda: mi(f, a) + mi(f, b),
        SCD=lambda: corr(f - b, a) + corr(f - a, b), VIF=lambda: vif(a.astype(np.float64), f.astype(np.float64)) + vif(b.astype(np.float64), f.astype(np.float64)),
        Qabf=lambda: qabf(f, a, b), SSIM=lambda: ssim(f, a, 2.) + ssim(f, b, 2.), SSIM_255=lambda: ssim(f, a, 255.) + ssim(f, b, 255.),
        MSE=mse, CC=lambda: (corr(a, f) + corr(b, f)) / 2, PSNR=lambda: 10 * np.log10(f.max() ** 2 / mse()))
