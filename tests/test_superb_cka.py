"""superb.cka against the HSIC form of linear CKA (Gram matrices, centring matrix) in numpy."""

import numpy as np
import pytest

from stackdistill import superb


def _cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) with linear kernels: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    gram_x, gram_y = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)
    return hsic(gram_x, gram_y) / np.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y))


def test_identical_inputs_give_one_and_invariances_hold():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8))
    assert superb.linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    # Linear CKA ignores rotations, isotropic scaling and offsets.
    assert superb.linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)


def test_orthogonal_representations_give_zero():
    # Centred columns of x and y span orthogonal subspaces of R^n, so Y^T X = 0.
    basis, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((40, 6)))
    basis -= basis.mean(0)  # centre
    basis, _ = np.linalg.qr(basis)  # orthonormal and still centred (columns sum to zero)
    x, y = basis[:, :3], basis[:, 3:]
    assert superb.linear_cka(x, y) == pytest.approx(0.0, abs=1e-12)


def test_matches_the_gram_formula_on_random_data():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5))
    y = x @ rng.standard_normal((5, 7)) + 0.5 * rng.standard_normal((30, 7))
    assert superb.linear_cka(x, y) == pytest.approx(_cka_gram(x, y), rel=1e-10)


def test_cka_matrix_and_heatmap(tmp_path):
    rng = np.random.default_rng(3)
    student = [rng.standard_normal((60, 4)) for _ in range(3)]
    teacher = [student[0] @ rng.standard_normal((4, 6)), rng.standard_normal((60, 6))]
    matrix = superb.cka_matrix(student, teacher)
    assert matrix.shape == (3, 2)
    for i, x in enumerate(student):
        for j, y in enumerate(teacher):
            assert matrix[i, j] == pytest.approx(_cka_gram(x, y), rel=1e-10)
    path = superb.plot_cka(matrix, tmp_path / "cka.png", "s", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        superb.cka_matrix([np.zeros((5, 2))], [np.zeros((6, 2))])
