#!/usr/bin/env python3
"""Foreign test datasets for mriloop's self-configuring training (issue 16).

Writes nnU-Net v2 raw datasets (dataset.json, imagesTr/CASE_000C.nii.gz, labelsTr/CASE.nii.gz)
plus classes.csv (case,class) with numpy + nibabel, independently of mriloop's own phantom
generator: other shapes, voxel sizes, contrasts, intensity scales, head poses, storage
orientations, label names and sizes, and class balance.

The anatomy is defined analytically in head space (mm, RAS, origin at the head's centre) and
sampled at every voxel centre of the case's own grid through the inverse of a random pose, with
partial volume from sub-voxel supersampling along thick axes.

Kinds:
  hb    T1 + T2, ~1 mm (0.9-1.1 mm per case), 88-104 voxels a side, a bilateral
        habenula-sized structure (~28 mm^3 a side, subtle contrast) beside the third
        ventricle, white-matter lesions in patients; 9 controls : 15 patients by default.
  aniso FLAIR + T1w, 0.9 x 0.9 x 3 mm axial slices, a bilateral deep nucleus (~180 mm^3 a
        side), lesions in patients; 2 controls per patient.

Usage: make_nnunet.py KIND OUT_DIR --cases N --seed S [--patients P]
"""
import argparse
import json
import os

import nibabel as nib
import numpy as np

KINDS = {
    "hb": dict(
        channels=["T1", "T2"],
        spacing=(1.0, 1.0, 1.0),
        jitter_spacing=0.1,
        shape=(96, 104, 92),
        jitter_shape=8,
        pair=("habenula_left", "habenula_right"),
        pair_radii=(1.6, 2.2, 1.9),
        pair_pos=(2.8, -9.0, 3.0),
        supersample=(1, 1, 1),
    ),
    "aniso": dict(
        channels=["FLAIR", "T1w"],
        spacing=(0.9, 0.9, 3.0),
        jitter_spacing=0.0,
        shape=(104, 116, 32),
        jitter_shape=6,
        pair=("left_nucleus", "right_nucleus"),
        pair_radii=(3.2, 3.6, 3.8),
        pair_pos=(9.0, -12.0, -6.0),
        supersample=(1, 1, 5),
    ),
}

# Tissue intensities per channel kind (before scale, bias and noise).
TISSUE = {
    #           scalp  skull  csf   gm    wm    deep  pair  lesion
    "T1": dict(scalp=0.9, skull=0.08, csf=0.22, gm=0.62, wm=0.95, deep=0.74, pair=0.66, lesion=0.5),
    "T1w": dict(scalp=0.9, skull=0.08, csf=0.22, gm=0.62, wm=0.95, deep=0.74, pair=0.60, lesion=0.5),
    "T2": dict(scalp=0.55, skull=0.05, csf=1.0, gm=0.62, wm=0.42, deep=0.55, pair=0.64, lesion=0.92),
    "FLAIR": dict(scalp=0.6, skull=0.05, csf=0.12, gm=0.62, wm=0.45, deep=0.56, pair=0.68, lesion=1.0),
}


def rotation(rng, max_deg):
    """A random rotation of at most max_deg degrees about each axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def case_grid(rng, kind):
    """The case's voxel grid: shape, spacing and a storage affine (axis flips, one permuted)."""
    k = KINDS[kind]
    shape = [s + int(rng.integers(-k["jitter_shape"], k["jitter_shape"] + 1)) for s in k["shape"]]
    scale = 1.0 + rng.uniform(-k["jitter_spacing"], k["jitter_spacing"])
    spacing = [s * (scale if i < 2 or kind == "hb" else 1.0) for i, s in enumerate(k["spacing"])]
    # Storage orientation: RAS, LAS or LPS (as DICOM converters write); world = A @ [i,j,k,1].
    flips = [(1, 1, 1), (-1, 1, 1), (-1, -1, 1)][int(rng.integers(0, 3))]
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = flips[a] * spacing[a]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    affine[:3, 3] = -centre + rng.uniform(-4, 4, 3)
    return shape, spacing, affine


def anatomy(rng, kind, patient):
    """Random per-case anatomy parameters in head space (mm)."""
    k = KINDS[kind]
    head = np.array([40.0, 46.0, 40.0]) * rng.uniform(0.93, 1.05, 3)
    wobble = rng.normal(0, 0.025, (3, 2))
    side = rng.uniform(0.85, 1.15)
    pr = np.array(k["pair_radii"]) * side ** (1 / 3)
    pp = np.array(k["pair_pos"]) + rng.uniform(-1.2, 1.2, 3) * [0.3, 1, 1]
    lesions = []
    if patient:
        for _ in range(int(rng.integers(2, 6))):
            r = rng.uniform(2.0, 5.0)
            c = rng.uniform(-1, 1, 3) * head * 0.5
            c[0] = np.sign(c[0] or 1) * max(abs(c[0]), 12.0)  # off the midline, in white matter
            lesions.append((c, r * rng.uniform(0.8, 1.25, 3)))
    return dict(head=head, wobble=wobble, pair_r=pr, pair_p=pp, lesions=lesions)


def ellipsoid(p, centre, radii):
    return (((p - centre) / radii) ** 2).sum(-1)


def tissue_at(p, a):
    """Tissue index and label at head-space points p (..., 3): 0 air .. 7 lesion; label 0..3."""
    rho = np.sqrt(ellipsoid(p, 0.0, a["head"]))
    ang = np.arctan2(p[..., 1], p[..., 0])
    rho = rho * (1 + a["wobble"][0, 0] * np.sin(3 * ang) + a["wobble"][1, 1] * np.cos(5 * ang))
    t = np.zeros(p.shape[:-1], np.uint8)
    t[rho < 1.0] = 1  # scalp
    t[rho < 0.93] = 2  # skull
    t[rho < 0.86] = 3  # csf
    t[rho < 0.83] = 4  # gm
    t[rho < 0.72] = 5  # wm
    for sx in (-1, 1):
        t[ellipsoid(p, [sx * 9.0, -4.0, 0.0], [6.5, 10.0, 6.0]) < 1] = 6  # thalamus
        t[ellipsoid(p, [sx * 6.5, 4.0, 9.0], [3.5, 14.0, 4.5]) < 1] = 3  # lateral ventricle
    third = (np.abs(p[..., 0]) < 1.1) & (p[..., 1] > -10) & (p[..., 1] < 4) & (np.abs(p[..., 2]) < 5)
    t[third] = 3
    label = np.zeros(p.shape[:-1], np.uint8)
    for value, sx in ((1, -1), (2, 1)):
        c = a["pair_p"] * [sx, 1, 1]
        inside = ellipsoid(p, c, a["pair_r"]) < 1
        t[inside] = 7
        label[inside] = value
    for c, r in a["lesions"]:
        inside = (ellipsoid(p, c, r) < 1) & (t == 5)
        t[inside] = 8
        label[inside] = 3
    return t, label


def render(rng, kind, patient):
    k = KINDS[kind]
    shape, spacing, affine = case_grid(rng, kind)
    a = anatomy(rng, kind, patient)
    pose = rotation(rng, 12.0)
    shift = rng.uniform(-5, 5, 3)
    ss = k["supersample"]
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    names = list(TISSUE["T1"].keys())
    sums = {ch: np.zeros(shape, np.float32) for ch in k["channels"]}
    n = 0
    label = None
    for oz in (np.arange(ss[2]) + 0.5) / ss[2] - 0.5:
        sub = idx + np.array([0, 0, oz], np.float32)
        world = sub @ affine[:3, :3].T + affine[:3, 3]
        head = (world - shift) @ pose  # inverse rotation: head = R^T (world - shift)
        t, lab = tissue_at(head, a)
        if abs(oz) < 1e-6:  # the label of the voxel's centre
            label = lab
        for ch in k["channels"]:
            table = np.array([0.0] + [TISSUE[ch][nm] for nm in names], np.float32)
            sums[ch] += table[t]
        n += 1
    images = {}
    centre = (np.array(shape) - 1) / 2
    for ch in k["channels"]:
        img = sums[ch] / n
        g = rng.normal(0, 0.12, 3)
        lin = ((idx - centre) / np.array(shape)) @ g
        img = img * np.exp(lin + 0.05 * rng.normal())
        sigma = 0.035
        img = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        images[ch] = img * rng.uniform(300, 1500)
    return images, label, affine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    k = KINDS[args.kind]
    rng = np.random.default_rng(args.seed)
    patients = args.patients if args.patients is not None else (
        args.cases * 15 // 24 if args.kind == "hb" else args.cases // 3)
    is_patient = np.array([True] * patients + [False] * (args.cases - patients))
    rng.shuffle(is_patient)
    os.makedirs(os.path.join(args.out, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "labelsTr"), exist_ok=True)
    rows = []
    for i, patient in enumerate(is_patient):
        case = f"{args.kind}_{args.seed:03d}_{i:03d}"
        images, label, affine = render(rng, args.kind, bool(patient))
        for c, ch in enumerate(k["channels"]):
            data = images[ch]
            if c == 0:
                data = np.clip(np.round(data), 0, 32767).astype(np.int16)
            else:
                data = data.astype(np.float32)
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, os.path.join(args.out, "imagesTr", f"{case}_{c:04d}.nii.gz"))
        lab = nib.Nifti1Image(label.astype(np.uint8), affine)
        nib.save(lab, os.path.join(args.out, "labelsTr", f"{case}.nii.gz"))
        rows.append((case, "patient" if patient else "control"))
    pair = k["pair"]
    dataset = {
        "channel_names": {str(i): ch for i, ch in enumerate(k["channels"])},
        "labels": {"background": 0, pair[0]: 1, pair[1]: 2, "lesion": 3},
        "numTraining": len(rows),
        "file_ending": ".nii.gz",
    }
    with open(os.path.join(args.out, "dataset.json"), "w") as f:
        json.dump(dataset, f, indent=2)
    with open(os.path.join(args.out, "classes.csv"), "w") as f:
        f.write("case,class\n")
        for case, cls in rows:
            f.write(f"{case},{cls}\n")
    print(f"{args.out}: {len(rows)} cases, {patients} patients")


if __name__ == "__main__":
    main()
