"""Independent re-derivations the tests compare the package with."""

import numpy as np


def fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two feature sets, re-derived with scipy.linalg.sqrtm (not the
    package's nuclear-norm route)."""
    import warnings

    from scipy import linalg

    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer samples than features: singular, still exact enough
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
