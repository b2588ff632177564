"""The vectorised RMSD equals rdMolAlign.GetBestRMS(ref, gen) and moves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.evaluate.metrics import aggregate, molecule_scores
from conformer.evaluate.rmsd import (
    ForkedRMSDPool,
    RMSDMatchError,
    get_best_rms_reference,
    kabsch_rmsd_min,
    max_rotation_overlap,
    rmsd_matrices,
    rmsd_matrix,
    symmetry_matches,
)
from conformer.sdf_io import read_conformer_groups

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "regenerate with: PYTHONPATH=. .venv/bin/python scripts/make_golden_rmsd.py"


@pytest.fixture(scope="module")
def golden():
    document = json.loads((GOLDEN / "rmsd_golden.json").read_text())
    refs = read_conformer_groups(GOLDEN / "rmsd_refs.sdf", key="molecule")
    gens = read_conformer_groups(GOLDEN / "rmsd_gens.sdf", key="name")
    return document, refs, gens


def _embed(smiles: str, n: int, seed: int) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMultipleConfs(mol, n, params)
    return mol


def test_matches_golden_getbestrms_matrix(golden):
    document, refs, gens = golden
    for name, expected in document["rmsd"].items():
        got = rmsd_matrix(refs[name], gens[name])
        np.testing.assert_allclose(got, np.array(expected), rtol=0, atol=1e-6,
                                   err_msg=f"{name}: {REGENERATE}")


def test_golden_cov_mat_to_the_last_digit(golden):
    document, refs, gens = golden
    scores = [molecule_scores(n, rmsd_matrix(refs[n], gens[n]), document["threshold"])
              for n in document["rmsd"]]
    got = aggregate(scores, document["threshold"])
    for key, value in document["metrics"].items():
        if key.startswith("cov") or key.startswith("n_"):
            assert got[key] == value, key  # coverage is a count ratio: exact
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key


def test_live_getbestrms_on_a_few_pairs(golden):
    _, refs, gens = golden
    for name in ("astex_1g9v", "omegapdb_2fm0", "omegacsd_JUVPAR"):
        got = rmsd_matrix(refs[name][:2], gens[name][:2])
        for i in range(2):
            for j in range(2):
                assert got[i, j] == pytest.approx(
                    get_best_rms_reference(refs[name][i], gens[name][j]), abs=1e-6)


def test_multiconformer_input_and_max_matches_cap(golden):
    _, refs, gens = golden
    name = "omegapdb_2fm0"  # 288 symmetry matches: a cap of 5 changes the answer
    ref = refs[name][0]
    gen = _embed(Chem.MolToSmiles(ref), 3, seed=5)  # one molecule, 3 conformers, with H
    got = rmsd_matrix([ref], [gen], max_matches=5)
    full = rmsd_matrix([ref], [gen])
    from rdkit.Chem import rdMolAlign

    for j, conf in enumerate(gen.GetConformers()):
        probe = Chem.RemoveHs(Chem.Mol(ref))
        target = Chem.RemoveHs(Chem.Mol(gen, confId=conf.GetId()))
        assert got[0, j] == pytest.approx(
            rdMolAlign.GetBestRMS(probe, target, maxMatches=5), abs=1e-6)
    assert (got >= full - 1e-12).all()
    assert len(symmetry_matches(Chem.RemoveHs(ref), Chem.RemoveHs(gen), max_matches=5)) == 5


def test_inputs_are_not_moved(golden):
    _, refs, gens = golden
    ref, gen = refs["astex_1jje"][0], gens["astex_1jje"][0]
    before = (ref.GetConformer().GetPositions().copy(), gen.GetConformer().GetPositions().copy())
    n_atoms = (ref.GetNumAtoms(), gen.GetNumAtoms())
    rmsd_matrix([ref], [gen])
    np.testing.assert_array_equal(ref.GetConformer().GetPositions(), before[0])
    np.testing.assert_array_equal(gen.GetConformer().GetPositions(), before[1])
    assert (ref.GetNumAtoms(), gen.GetNumAtoms()) == n_atoms  # hydrogens not stripped in place
    get_best_rms_reference(ref, gen)  # the reference path works on copies too
    np.testing.assert_array_equal(ref.GetConformer().GetPositions(), before[0])


def test_kabsch_rigid_motion_invariance_and_reflection_float64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 12, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.linalg.det(q))  # proper rotation
    y = x @ rotation.T + rng.normal(size=3)
    centre = lambda a: a - a.mean(axis=1, keepdims=True)  # noqa: E731
    identity = np.arange(12)[None, :]
    assert kabsch_rmsd_min(centre(x), centre(y), identity)[0, 0] < 1e-7
    # A mirror image of a chiral point set cannot be superposed by a proper rotation.
    mirrored = centre(x * np.array([1.0, 1.0, -1.0]))
    assert kabsch_rmsd_min(centre(x), mirrored, identity)[0, 0] > 0.1
    # Generated atom perm[i] is reference atom i: only the map ``perm`` superposes them.
    perm = rng.permutation(12)
    shuffled = np.empty_like(y)
    shuffled[:, perm] = y
    assert kabsch_rmsd_min(centre(x), centre(shuffled), identity)[0, 0] > 0.1
    maps = np.stack([np.arange(12), perm])
    assert kabsch_rmsd_min(centre(x), centre(shuffled), maps)[0, 0] < 1e-7


def test_graph_mismatch_raises_or_marks_nan():
    a = _embed("CCO", 1, seed=3)
    b = _embed("CCN", 2, seed=3)
    with pytest.raises(RMSDMatchError):
        rmsd_matrix([a], [b])
    assert np.isnan(rmsd_matrix([a], [b], on_mismatch="nan")).all()


def test_chunked_kernel_equals_unchunked(golden, monkeypatch):
    import conformer.evaluate.rmsd.kernel as rmsd_module

    _, refs, gens = golden
    name = "omegapdb_2fm0"  # many maps: the chunks split maps, references and kernel calls
    whole = rmsd_matrix(refs[name], gens[name])
    monkeypatch.setattr(rmsd_module, "_GEMM_PAIRS", 7)
    monkeypatch.setattr(rmsd_module, "_PERMUTED_ELEMENTS", 500)
    monkeypatch.setattr(rmsd_module, "_KERNEL_ELEMENTS", 5)
    np.testing.assert_allclose(rmsd_matrix(refs[name], gens[name]), whole, rtol=0, atol=1e-12)


def _svd_overlap(cov: np.ndarray) -> np.ndarray:
    singular = np.linalg.svd(cov, compute_uv=False)
    sign = np.where(np.linalg.det(cov) < 0, -1.0, 1.0)
    return singular[..., 0] + singular[..., 1] + sign * singular[..., 2]


def _horn_matrix(cov: np.ndarray) -> np.ndarray:
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = np.moveaxis(cov, (-2, -1), (0, 1))
    rows = [[sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def test_closed_form_overlap_equals_svd_and_horn_eigenvalue_float64(monkeypatch):
    svd = np.linalg.svd
    fallbacks = []

    def counting_svd(a, *args, **kwargs):
        fallbacks.append(len(a))
        return svd(a, *args, **kwargs)

    rng = np.random.default_rng(11)
    generic = rng.normal(size=(2000, 3, 3)) * rng.uniform(0.01, 300.0, size=(2000, 1, 1))
    # covariances of real point sets: centred X (n, 3), Y = X rotated / mirrored + noise
    points = rng.normal(size=(300, 20, 3)) * np.array([4.0, 2.0, 0.3])  # elongated, flat
    points -= points.mean(axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.normal(size=(300, 3, 3)))
    moved = points @ q + rng.normal(scale=0.5, size=points.shape)
    aligned = np.einsum("bni,bnj->bij", points, moved)
    cov = np.concatenate([generic, aligned])
    monkeypatch.setattr(np.linalg, "svd", counting_svd)
    got = max_rotation_overlap(cov)
    monkeypatch.undo()
    assert sum(fallbacks) < 0.01 * len(cov)  # the closed form itself, not its SVD safety net
    assert got.shape == (len(cov),) and got.dtype == np.float64
    np.testing.assert_allclose(got, _svd_overlap(cov), rtol=1e-11, atol=1e-11)
    top = np.linalg.eigvalsh(_horn_matrix(cov))[:, -1]
    np.testing.assert_allclose(got, top, rtol=1e-11, atol=1e-11)
    assert (np.linalg.det(cov) < 0).sum() > 100  # the reflection-safe branch was exercised


def test_degenerate_covariances_take_the_svd_path():
    rng = np.random.default_rng(5)
    line = rng.normal(size=(50, 3, 1)) @ rng.normal(size=(50, 1, 3))  # rank 1: collinear atoms
    plane = rng.normal(size=(50, 3, 2)) @ rng.normal(size=(50, 2, 3))  # rank 2: planar
    q, _ = np.linalg.qr(rng.normal(size=(50, 3, 3)))
    isotropic = 7.0 * q  # all singular values equal: the closed form's cubic has a triple root
    cov = np.concatenate([line, plane, isotropic, np.zeros((1, 3, 3))])
    np.testing.assert_allclose(max_rotation_overlap(cov), _svd_overlap(cov), rtol=1e-9,
                               atol=1e-9)


def test_atom_order_variants_are_grouped_apart(golden):
    """A generated record with the same graph in another atom order gets its own maps."""
    _, refs, gens = golden
    name = "astex_1jje"
    ref_list, gen_list = refs[name][:3], list(gens[name][:4])
    order = list(range(gen_list[1].GetNumAtoms()))[::-1]
    gen_list[1] = Chem.RenumberAtoms(gen_list[1], order)
    with_h = Chem.AddHs(gen_list[2], addCoords=True)  # same heavy graph, hydrogens explicit
    gen_list[2] = with_h
    got = rmsd_matrix(ref_list, gen_list)
    for i, ref in enumerate(ref_list):
        for j, gen in enumerate(gen_list):
            assert got[i, j] == pytest.approx(get_best_rms_reference(ref, gen), abs=1e-6)


def test_workers_equal_single_process_and_keep_order(golden):
    _, refs, gens = golden
    names = sorted(refs)[:6]
    problems = [(refs[n], gens[n]) for n in names]
    single = [rmsd_matrix(r, g) for r, g in problems]
    before = [m.GetConformer().GetPositions().copy() for r, g in problems for m in r + g]
    done = []
    parallel = rmsd_matrices(problems, workers=2, progress=done.append)
    assert sum(done) == len(problems)
    for a, b in zip(single, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    after = [m.GetConformer().GetPositions() for r, g in problems for m in r + g]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    with ForkedRMSDPool(problems, workers=2, chunk_pairs=1) as pool:
        assert len(pool.chunks) == len(problems)  # one molecule per chunk at this size
        for a, b in zip(single, pool.map(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_heavy_templates_give_the_maps_of_a_sanitised_remove_hs():
    """Templates skip RemoveHs's re-sanitisation; over every Hutchison molecule (699 graphs,
    two records each) the maps are exactly those of the sanitised heavy-atom copies that
    GetBestRMS's callers pass."""
    from conformer.evaluate.rmsd.symmetry import _heavy_template

    groups = read_conformer_groups(
        Path(__file__).parent.parent / "data/hutchison/hutchison_conformers.sdf.gz",
        key="molecule")
    assert len(groups) == 699
    for name, mols in groups.items():
        ref, gen = mols[0], mols[-1]
        fast = symmetry_matches(_heavy_template(ref)[0], _heavy_template(gen)[0])
        sanitised = symmetry_matches(Chem.RemoveHs(ref), Chem.RemoveHs(gen))
        assert fast.shape == sanitised.shape and (fast == sanitised).all(), name


def test_batched_matrices_equal_per_molecule_ones(golden):
    """Small molecules share closed-form passes in ``rmsd_matrices``; the numbers do not
    change (beyond round-off of vectorised transcendental functions), whichever molecules are
    batched together."""
    _, refs, gens = golden
    names = [n for n in refs if n in gens]
    problems = [(refs[n], gens[n]) for n in names]
    alone = [rmsd_matrix(r, g) for r, g in problems]
    together = rmsd_matrices(problems, workers=1)
    reversed_order = rmsd_matrices(problems[::-1], workers=1)[::-1]
    for a, b, c in zip(alone, together, reversed_order, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-12)


def test_conformer_arrays_equal_getbestrms_on_symmetric_groups():
    """The engine's array input (a template with hydrogens and an (n_conf, n_atoms, 3)
    array, as the fast reader hands it over) gives GetBestRMS on heavy-atom copies: a
    carboxylic acid, a para-substituted ring and a tert-butyl group (many maps)."""
    from conformer.evaluate.rmsd import ConformerArray

    refs = _embed("OC(=O)c1ccc(cc1)C(C)(C)C", 3, seed=21)
    gens = _embed("OC(=O)c1ccc(cc1)C(C)(C)C", 4, seed=22)
    ref_xyz = np.array([c.GetPositions() for c in refs.GetConformers()])
    before = ref_xyz.copy()
    array = ConformerArray(Chem.Mol(refs, confId=0), ref_xyz)
    assert array.GetNumConformers() == 3
    got = rmsd_matrix([array], [gens])
    expected = np.array([[get_best_rms_reference(refs, gens, ref_conf_id=r, gen_conf_id=g)
                          for g in range(4)] for r in range(3)])
    assert len(symmetry_matches(Chem.RemoveHs(refs), Chem.RemoveHs(gens))) >= 8
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, rmsd_matrix([refs], [gens]), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ref_xyz, before)  # the array is read, not moved
    # mixed inputs keep their order: array rows, then a molecule's conformers
    mixed = rmsd_matrix([ConformerArray(refs, ref_xyz[:1]), Chem.Mol(refs, confId=2)], [gens])
    np.testing.assert_allclose(mixed, got[[0, 2]], rtol=0, atol=1e-12)


def test_overlap_workspace_and_out_give_the_same_values():
    from conformer.evaluate.rmsd.kernel import _Workspace, overlap_from_entries

    rng = np.random.default_rng(3)
    entries = rng.normal(size=(9, 300))
    alone = overlap_from_entries(entries)
    workspace, out = _Workspace(1000), np.empty(300)
    assert overlap_from_entries(entries[:, :200], out[:200], workspace) is not None
    overlap_from_entries(entries[:, 200:], out[200:], workspace)  # reused temporaries
    np.testing.assert_array_equal(out, alone)
    np.testing.assert_allclose(alone, max_rotation_overlap(entries.T.reshape(-1, 3, 3)),
                               rtol=0, atol=0)


def _all_maps_float64(ref_xyz, gen_xyz, maps):
    """Best-map RMSD (R, G) with every map through the float64 closed form (no pre-pass)."""
    from conformer.evaluate.rmsd.kernel import overlap_from_entries

    cov = np.einsum("rni,gmnj->rmgij", ref_xyz, gen_xyz[:, maps])  # (R, M, G, 3, 3)
    best = overlap_from_entries(np.ascontiguousarray(cov.reshape(-1, 9).T)).reshape(
        cov.shape[:3]).max(axis=1)
    msd = (np.einsum("rni,rni->r", ref_xyz, ref_xyz)[:, None]
           + np.einsum("gni,gni->g", gen_xyz, gen_xyz)[None] - 2 * best) / ref_xyz.shape[1]
    return np.sqrt(np.maximum(msd, 0.0))


def _centred(xyz):
    return xyz - xyz.mean(axis=-2, keepdims=True)


def test_float32_prescreen_keeps_near_ties_and_drops_clear_losers():
    from conformer.evaluate.rmsd.kernel import _PRESCREEN_MARGIN, _prescreen_keep

    rng = np.random.default_rng(11)
    n = 12
    ref = _centred(rng.normal(size=(1, n, 3)) * 2.0)
    swap = np.arange(n)
    swap[[0, 1]] = [1, 0]
    # generated conformer: the reference with atoms 0 and 1 placed almost symmetrically, so
    # the identity map and the 0<->1 swap give overlaps 1e-9 apart (below float32's resolution)
    gen = ref.copy()
    middle = (gen[0, 0] + gen[0, 1]) / 2
    gen[0, 0], gen[0, 1] = middle + 1e-9, middle - 1e-9
    far = _centred(rng.normal(size=(1, n, 3)) * 2.0)  # a conformer with one clearly best map
    gens = _centred(np.concatenate([gen, far]))
    maps = np.stack([np.arange(n), swap, rng.permutation(n), rng.permutation(n)])
    product = np.einsum("rni,gmnj->rimgj", ref, gens[:, maps])  # the kernel's layout
    by_entry = product.reshape(1, 3, -1, 3).transpose(1, 3, 0, 2)  # (3, 3, R, M * G)
    norms = np.sqrt(np.einsum("gni,gni->g", gens, gens))[None] * np.linalg.norm(ref)
    keep = _prescreen_keep(by_entry, 1, len(maps), 2, _PRESCREEN_MARGIN * norms)
    keep = keep.reshape(len(maps), 2)
    assert keep[:2, 0].all()  # the near tie: both maps go to float64
    assert keep[:, 1].sum() == 1  # one clear winner: the other maps are dropped
    # the kernel (pre-pass, then float64 on the kept maps) equals float64 on every map, to
    # round-off (einsum here, GEMM there): the two tied maps' RMSDs differ by ~4e-11 A
    np.testing.assert_allclose(kabsch_rmsd_min(ref, gens, maps),
                               _all_maps_float64(ref, gens, maps), rtol=0, atol=1e-12)


def test_float32_prescreen_error_is_well_inside_its_margin():
    """The pre-pass's safety rests on |float32 - float64| < margin / 2 for trusted values:
    checked on random conformers (each map a random permutation) and near-planar ones."""
    from conformer.evaluate.rmsd.kernel import _PRESCREEN_MARGIN, overlap_from_entries

    rng = np.random.default_rng(5)
    n = 30
    ref = _centred(rng.normal(size=(20, n, 3)) * 3.0)
    gens = rng.normal(size=(40, n, 3)) * 3.0
    gens[20:, :, 2] *= 1e-3  # near-planar: degenerate spectra
    gens = _centred(gens)
    maps = np.stack([rng.permutation(n) for _ in range(6)])
    cov = np.einsum("rni,gmnj->rmgij", ref, gens[:, maps])
    entries = np.ascontiguousarray(cov.reshape(-1, 9).T)
    exact = overlap_from_entries(entries)
    single = overlap_from_entries(entries.astype(np.float32), degenerate="nan")
    assert single.dtype == np.float32
    scale = (np.linalg.norm(ref, axis=(1, 2))[:, None, None]
             * np.linalg.norm(gens, axis=(1, 2))[None, None, :]).repeat(len(maps), 1).ravel()
    trusted = ~np.isnan(single)
    assert trusted.mean() > 0.9
    error = np.abs(single[trusted] - exact[trusted]) / scale[trusted]
    assert error.max() < _PRESCREEN_MARGIN / 20


def test_kernel_with_many_maps_equals_float64_on_every_map():
    rng = np.random.default_rng(8)
    n = 16
    ref = _centred(rng.normal(size=(7, n, 3)) * 2.5)
    # generated: noisy copies of the references, atoms permuted, so several maps compete
    gens = _centred(np.concatenate([ref[:, rng.permutation(n)] + rng.normal(size=(7, n, 3)) * s
                                    for s in (0.05, 0.5, 2.0)]))
    maps = np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(9)])
    np.testing.assert_allclose(kabsch_rmsd_min(ref, gens, maps),
                               _all_maps_float64(ref, gens, maps), rtol=0, atol=1e-12)
