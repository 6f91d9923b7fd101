#!/usr/bin/python3
"""Bayesian polishing side by side: `regula polish` and RELION 3.1.3's relion_motion_refine on the same
simulated movies (bench/README: results in bench/results/, summary in docs/benchmarks.md).

Per data set (a map, a seed): `regula simulate_movies` (movies with global drift and a smooth local
deformation, Poisson counts, radiation damage; the truth of every particle's track), `regula motioncorr`
(global alignment, dose weighting: the starting tracks both programs read), particles with the true
coordinates, poses and CTF (rlnRandomSubset alternating), half maps reconstructed by relion_reconstruct
from particles cut out of the motion-corrected micrographs (what a refinement would give: noisy, one per
half set, so that neither program aligns to the truth), then both programs with their default motion
parameters and --combine_frames on 2 threads. Reported: wall time, track error against the truth (RMS
over particles and frames after removing each particle's mean; and the spread of the per-particle
offsets), and the FSC against the true map of relion_reconstruct --ctf of the shiny particles (and of
the particles cut from the micrographs).

Usage: bench/polish_vs_relion.py OUT_DIR MAP SEED [--movies N --size PX --frames F --particles P --local PX]
"""
import argparse, os, subprocess, sys, time

import gemmi
import mrcfile
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REGULA = os.environ.get("REGULA", os.path.join(HERE, "..", "build", "bin", "regula"))


def run(cmd, cwd):
    t = time.time()
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{cmd[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.time() - t


def loop(path, block):
    b = gemmi.cif.read_file(str(path)).find_block(block)
    for item in b:
        if item.loop is not None:
            t = item.loop
            return {tag[1:]: [t.val(i, j) for i in range(t.length())] for j, tag in enumerate(t.tags)}


def tracks(path):
    doc = gemmi.cif.read_file(str(path))
    return np.array([[[float(v) for v in row] for row in b.find(["_rlnOriginXAngst", "_rlnOriginYAngst"])]
                     for b in doc if b.name.isdigit()])


def fsc(a, b):
    n = a.shape[0]
    A, B = np.fft.rfftn(a), np.fft.rfftn(b)
    k = np.fft.fftfreq(n) * n
    kz = np.fft.rfftfreq(n) * n
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kz[None, None, :] ** 2)).astype(int)
    m = r < n // 2
    num = np.bincount(r[m], (A * np.conj(B)).real[m])
    return num / np.sqrt(np.bincount(r[m], (abs(A) ** 2)[m]) * np.bincount(r[m], (abs(B) ** 2)[m]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("map")
    ap.add_argument("seed", type=int)
    ap.add_argument("--movies", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--dose", type=float, default=1.0)
    ap.add_argument("--particles", type=int, default=150)
    ap.add_argument("--local", type=float, default=3.0)
    a = ap.parse_args()
    d = os.path.abspath(a.out)
    os.makedirs(d, exist_ok=True)
    mp = os.path.abspath(a.map)
    truth = mrcfile.open(mp).data.astype(float)
    n = truth.shape[0]
    angpix = float(mrcfile.open(mp).voxel_size.x)
    run([REGULA, "simulate_movies", "--i", mp, "--o", "sim", "--n", a.movies, "--size", a.size, "--frames", a.frames,
         "--dose_per_frame", a.dose, "--particles", a.particles, "--local_max", a.local, "--seed", a.seed,
         "--angpix", angpix, "--j", 2, "--quiet", "--no_ideal"], d)
    run([REGULA, "motioncorr", "--i", "sim/movies.star", "--o", "MC/", "--dose_weighting", "--dose_per_frame", a.dose,
         "--j", 2], d)
    # Particles: true coordinates, poses and CTF; images cut from the dose-weighted micrographs
    # (inverted contrast, background mean 0 and s.d. 1 beyond 75% of the radius).
    t = loop(f"{d}/sim/truth_particles.star", "particles")
    mics = loop(f"{d}/MC/corrected_micrographs.star", "micrographs")["rlnMicrographName"]
    by_stem = {os.path.splitext(os.path.basename(m))[0]: m for m in mics}
    yy, xx = np.mgrid[:n, :n] - n // 2
    bg = np.hypot(xx, yy) > 0.75 * n / 2
    rows, imgs, cache = [], [], {}
    for k in range(len(t["rlnCoordinateX"])):
        mic = by_stem[os.path.splitext(os.path.basename(t["rlnMicrographMovieName"][k]))[0]]
        if mic not in cache:
            cache[mic] = np.pad(mrcfile.open(f"{d}/{mic}").data.astype(float), n, mode="edge")
        x, y = float(t["rlnCoordinateX"][k]), float(t["rlnCoordinateY"][k])
        xi, yi = int(x), int(y)
        b = -cache[mic][yi + n - n // 2:yi + n + n // 2, xi + n - n // 2:xi + n + n // 2]
        imgs.append(((b - b[bg].mean()) / b[bg].std()).astype(np.float32))
        rows.append(f"{x} {y} {k + 1:06d}@particles.mrcs {mic} 1 {t['rlnAngleRot'][k]} {t['rlnAngleTilt'][k]} "
                    f"{t['rlnAnglePsi'][k]} {-(x - xi) * angpix:.4f} {-(y - yi) * angpix:.4f} {t['rlnDefocusU'][k]} "
                    f"{t['rlnDefocusV'][k]} {t['rlnDefocusAngle'][k]} {k % 2 + 1}")
    with mrcfile.new(f"{d}/particles.mrcs", overwrite=True) as f:
        f.set_data(np.array(imgs))
        f.voxel_size = angpix
    labels = ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup", "rlnAngleRot",
              "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV",
              "rlnDefocusAngle", "rlnRandomSubset"]
    optics = ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
              "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
              "rlnImageDimensionality"]
    text = ["# version 30001", "", "data_optics", "", "loop_"] + [f"_{l} #{i + 1}" for i, l in enumerate(optics)]
    text += [f"opticsGroup1 1 {angpix} 300 2.7 0.1 {angpix} {n} 2", "", "data_particles", "", "loop_"]
    text += [f"_{l} #{i + 1}" for i, l in enumerate(labels)] + rows
    open(f"{d}/particles.star", "w").write("\n".join(text) + "\n\n")
    for h in (1, 2):
        run(["relion_reconstruct", "--i", "particles.star", "--o", f"half{h}.mrc", "--ctf", "--subset", h], d)
    fsc_table = ["# version 30001", "", "data_fsc", "", "loop_", "_rlnSpectralIndex #1", "_rlnResolution #2",
                 "_rlnFourierShellCorrelationCorrected #3"]
    hf = fsc(mrcfile.open(f"{d}/half1.mrc").data.astype(float), mrcfile.open(f"{d}/half2.mrc").data.astype(float))
    fsc_table += [f"{i} {i / (n * angpix):.6f} {max(0.0, hf[i]) if i < len(hf) else 0.0:.4f}" for i in range(n // 2 + 1)]
    open(f"{d}/postprocess.star", "w").write("\n".join(fsc_table) + "\n\n")
    common = ["--i", "particles.star", "--m1", "half1.mrc", "--m2", "half2.mrc", "--corr_mic",
              "MC/corrected_micrographs.star", "--combine_frames", "--j", 2]
    times = {"regula": run([REGULA, "polish", "--o", "Polish/"] + common, d),
             "relion": run(["relion_motion_refine", "--o", "RelionPolish/", "--f", "postprocess.star", "--angpix_ref",
                            angpix] + common, d)}
    print(f"# {os.path.basename(mp)} seed {a.seed}: {a.movies} movies {a.size}^2, {a.frames} frames x {a.dose} e/A^2, "
          f"{len(rows)} particles, box {n}, local deformation up to {a.local} px")
    for name, star in [("micrograph", "particles.star"), ("regula", "Polish/shiny.star"),
                       ("relion", "RelionPolish/shiny.star")]:
        run(["relion_reconstruct", "--i", star, "--o", f"rec_{name}.mrc", "--ctf"], d)
        f = fsc(mrcfile.open(f"{d}/rec_{name}.mrc").data.astype(float), truth)
        below = np.nonzero(f[1:] < 0.5)[0]
        res05 = n * angpix / (below[0] + 1) if len(below) else 2 * angpix
        line = f"{name:10s} map vs truth: FSC 0.5 at {res05:.2f} A, mean FSC shells {n // 12}-{n // 3}: " \
               f"{f[n // 12:n // 3].mean():.3f}"
        if name != "micrograph":
            err, spread = [], []
            for i, m in enumerate(mics):
                est = tracks(f"{d}/{'Polish' if name == 'regula' else 'RelionPolish'}/{os.path.splitext(m)[0]}_tracks.star")
                tru = tracks(f"{d}/sim/Truth/movie_{i + 1:03d}_tracks.star")
                e = (est - est.mean(axis=1, keepdims=True)) - (tru - tru.mean(axis=1, keepdims=True))
                err.append(np.sqrt(np.mean(np.sum(e ** 2, axis=2))) / angpix)
                off = (est - tru).mean(axis=1)
                spread.append(np.sqrt(np.mean(np.sum((off - off.mean(axis=0)) ** 2, axis=1))) / angpix)
            line += f"; tracks rms {np.mean(err):.3f} px (per movie {np.round(err, 2).tolist()}), offsets " \
                    f"{np.mean(spread):.2f} px; {times[name]:.1f} s"
        print(line)
    g = []
    for i, m in enumerate(mics):
        meta = loop(f"{d}/{os.path.splitext(m)[0]}.star", "global_shift")
        gl = -np.stack([np.array(meta["rlnMicrographShiftX"], float), np.array(meta["rlnMicrographShiftY"], float)], 1)
        tru = tracks(f"{d}/sim/Truth/movie_{i + 1:03d}_tracks.star") / angpix
        e = (gl - gl.mean(axis=0)) - (tru - tru.mean(axis=1, keepdims=True))
        g.append(np.sqrt(np.mean(np.sum(e ** 2, axis=2))))
    print(f"motioncorr global tracks rms {np.mean(g):.3f} px; time ratio regula/relion {times['regula'] / times['relion']:.2f}")


if __name__ == "__main__":
    main()
