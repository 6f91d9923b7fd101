// Jobs (src/regula/jobs/*.hpp) with keyword arguments: each job's keywords are the fields of its
// option struct, listed once in a Fields table below (python/src/common.hpp); results are dicts of
// numpy arrays, numbers and the paths written.
#include <fmt/format.h>

#include "common.hpp"
#include "regula/io/mrc.hpp"
#include "regula/jobs/class2d.hpp"
#include "regula/jobs/class3d.hpp"
#include "regula/jobs/fsc.hpp"
#include "regula/jobs/initial_model.hpp"
#include "regula/jobs/locres.hpp"
#include "regula/jobs/mask.hpp"
#include "regula/jobs/ctf_refine.hpp"
#include "regula/jobs/polish.hpp"
#include "regula/jobs/particle_subtract.hpp"
#include "regula/jobs/postprocess.hpp"
#include "regula/jobs/preprocess.hpp"
#include "regula/jobs/project.hpp"
#include "regula/jobs/reconstruct.hpp"
#include "regula/jobs/refine3d.hpp"
#include "regula/jobs/simulate.hpp"
#include "regula/jobs/import.hpp"
#include "regula/jobs/autopick.hpp"
#include "regula/jobs/ctffind.hpp"
#include "regula/jobs/extract.hpp"
#include "regula/jobs/motioncorr.hpp"
#include "regula/jobs/simulate_movies.hpp"
#include "regula/jobs/symmetry_expand.hpp"
#include "regula/jobs/multibody.hpp"
#include "regula/jobs/flex_analyse.hpp"

namespace regula::python {
namespace {

// name -> defaults of its option struct (regula.job_options).
std::map<std::string, std::function<py::dict()>>& job_registry() {
  static std::map<std::string, std::function<py::dict()>> r;
  return r;
}

// Defines regula.<name>(**options): options onto an Opt through `fields` (plus `setup`, with the
// GIL, for what the keywords imply), run(opt) without the GIL, convert(opt, result) to Python.
template <class Opt, class Run, class Convert>
void def_job(py::module_& m, const char* name, const char* struct_name,
             std::initializer_list<std::pair<const char*, typename Fields<Opt>::Member>> fields, Run run,
             Convert convert, const std::string& what, const std::string& returns,
             std::function<void(Opt&, const py::kwargs&)> setup = nullptr) {
  auto f = std::make_shared<Fields<Opt>>(name, fields);
  job_registry()[name] = [f] { return f->defaults(); };
  const std::string doc = fmt::format(
      "{}\n\nReturns {}\n\nOptions ({} fields, with their defaults; the command line's options):\n{}\n"
      "progress: callable(dict(task, done, total, elapsed_s, eta_s)) called as the job advances.\n"
      "Unknown keywords raise TypeError; bad values or files regula.InputError.",
      what, returns, struct_name, f->signature());
  m.def(name, [f, run, convert, setup](py::kwargs kw) {
    Opt o{};
    f->apply(o, kw);
    // With continue_from, the checkpoint's number of iterations unless the keyword gives one (as --iter).
    if constexpr (requires { o.iterations_given; })
      o.iterations_given = kw.contains("iterations") || kw.contains("max_iterations");
    if (setup) setup(o, kw);
    auto r = run_job(kw, [&] { return run(o); });
    return convert(o, std::move(r));
  }, doc.c_str());
}

// The result of a job run micrograph by micrograph: its output STAR file and how many it did, skipped
// (already done) and could not do.
template <class R>
py::dict micrograph_counts(const R& r) {
  py::dict d;
  d["star"] = r.star;
  d["done"] = r.done;
  d["skipped"] = r.skipped;
  d["failed"] = r.failed;
  return d;
}

py::array_t<float> read_map(const std::string& path) {
  Grid<float> g;
  {
    py::gil_scoped_release release;
    g = mrc::read(path);
  }
  return to_numpy(std::move(g));
}

}  // namespace

void bind_jobs(py::module_& m) {
  using S = SimulateOptions;
  def_job<S>(
      m, "simulate", "SimulateOptions",
      {REGULA_FIELD(S, map), REGULA_FIELD(S, map2), REGULA_FIELD(S, frac2), REGULA_FIELD(S, out_dir),
       REGULA_FIELD(S, n), REGULA_FIELD(S, angpix), REGULA_FIELD(S, box), REGULA_FIELD(S, snr), REGULA_FIELD(S, ctf),
       REGULA_FIELD(S, defocus_min), REGULA_FIELD(S, defocus_max), REGULA_FIELD(S, voltage), REGULA_FIELD(S, cs),
       REGULA_FIELD(S, amplitude_contrast), REGULA_FIELD(S, max_shift), REGULA_FIELD(S, views),
       REGULA_FIELD(S, bg_radius), REGULA_FIELD(S, beamtilt_x), REGULA_FIELD(S, beamtilt_y),
       REGULA_FIELD(S, odd_zernike), REGULA_FIELD(S, even_zernike), REGULA_FIELD(S, mag),
       REGULA_FIELD(S, premultiply), REGULA_FIELD(S, og2_fraction), REGULA_FIELD(S, og2_angpix),
       REGULA_FIELD(S, og2_box), REGULA_FIELD(S, micrographs), REGULA_FIELD(S, defocus_spread), REGULA_FIELD(S, noise_spread), REGULA_FIELD(S, noise_bfactor),
       REGULA_FIELD(S, junk_fraction), REGULA_FIELD(S, junk_map), REGULA_FIELD(S, seed),
       REGULA_FIELD(S, threads)},
      [](const S& o) { return simulate(o); },
      [](const S&, SimulateResult r) {
        py::dict d;
        d["particles_star"] = r.particles_star;
        d["truth_star"] = r.truth_star;
        d["stack"] = r.stack;
        d["stack2"] = r.stack2;
        d["noise_sigma"] = r.noise_sigma;
        d["map_scale"] = r.map_scale;
        d["signal_variance"] = r.signal_variance;
        return d;
      },
      "Simulated particles from one or two maps (jobs/simulate.hpp): out_dir/particles.mrcs, particles.star,\n"
      "truth.star, truth_map1.mrc.",
      "dict(particles_star, truth_star, stack, stack2, noise_sigma, signal_variance, map_scale)");

  using P = PreprocessOptions;
  def_job<P>(
      m, "preprocess", "PreprocessOptions",
      {REGULA_FIELD(P, star), REGULA_FIELD(P, out_root), REGULA_FIELD(P, norm), REGULA_FIELD(P, bg_radius),
       REGULA_FIELD(P, invert_contrast), REGULA_FIELD(P, scale), REGULA_FIELD(P, window), REGULA_FIELD(P, angpix),
       REGULA_FIELD(P, threads)},
      [](const P& o) { return preprocess(o); },
      [](const P&, PreprocessResult r) {
        py::dict d;
        d["stack"] = r.stack;
        d["star"] = r.star;
        d["count"] = r.count;
        d["box_in"] = r.box_in;
        d["box_out"] = r.box_out;
        return d;
      },
      "Per-image operations on a particle stack (jobs/preprocess.hpp): scale, window, norm, invert_contrast.",
      "dict(stack, star, count, box_in, box_out)");

  using J = ProjectOptions;
  def_job<J>(
      m, "project", "ProjectOptions",
      {REGULA_FIELD(J, map), REGULA_FIELD(J, out_root), REGULA_FIELD(J, ang_star), REGULA_FIELD(J, nr_uniform),
       REGULA_FIELD(J, ctf), REGULA_FIELD(J, ctf_phase_flip), REGULA_FIELD(J, angpix), REGULA_FIELD(J, add_noise),
       REGULA_FIELD(J, white_noise),
       REGULA_FIELD(J, maxres), REGULA_FIELD(J, pad), REGULA_FIELD(J, seed), REGULA_FIELD(J, threads)},
      [](const J& o) { return project(o); },
      [](const J&, ProjectResult r) {
        py::dict d;
        d["stack"] = r.stack;
        d["stacks"] = r.stacks;
        d["star"] = r.star;
        d["count"] = r.count;
        d["box"] = r.box;
        d["angpix"] = r.angpix;
        return d;
      },
      "Projections of a map file as relion_project (jobs/project.hpp): out_root.mrcs and out_root.star.\n"
      "project(map_array, rot, tilt, psi) is the in-memory projection.",
      "dict(stack, stacks, star, count, box, angpix)");

  using R = ReconstructJobOptions;
  def_job<R>(
      m, "reconstruct", "ReconstructJobOptions",
      {REGULA_FIELD(R, star), REGULA_FIELD(R, out_map), REGULA_FIELD(R, ctf), REGULA_FIELD(R, ctf_phase_flipped),
       REGULA_FIELD(R, newbox), REGULA_FIELD(R, sym),
       REGULA_FIELD(R, maxres), REGULA_FIELD(R, angpix), REGULA_FIELD(R, pad), REGULA_FIELD(R, gridding_iterations),
       REGULA_FIELD(R, blob_r), REGULA_FIELD(R, blob_m), REGULA_FIELD(R, blob_a), REGULA_FIELD(R, threads)},
      [](const R& o) { return reconstruct(o); },
      [](const R& o, ReconstructResult r) {
        py::dict d;
        d["map"] = read_map(o.out_map);
        d["out_map"] = o.out_map;
        d["particles"] = r.particles;
        d["box"] = r.box;
        d["angpix"] = r.angpix;
        d["r_max"] = r.r_max;
        return d;
      },
      "Reconstruction from particles with known poses as relion_reconstruct (jobs/reconstruct.hpp).",
      "dict(map (array of out_map), out_map, particles, box, angpix, r_max)");

  using K = MaskJobOptions;
  def_job<K>(
      m, "mask", "MaskJobOptions",
      {REGULA_FIELD(K, map), REGULA_FIELD(K, out), REGULA_FIELD(K, ini_threshold), REGULA_FIELD(K, lowpass),
       REGULA_FIELD(K, extend_px), REGULA_FIELD(K, soft_edge_px), REGULA_FIELD(K, angpix)},
      [](const K& o) { return mask_create(o); },
      [](const K& o, MaskJobResult r) {
        py::dict d;
        d["mask"] = read_map(o.out);
        d["out"] = o.out;
        d["box"] = r.box;
        d["angpix"] = r.angpix;
        d["volume_fraction"] = r.volume_fraction;
        return d;
      },
      "A soft mask from a map file as relion_mask_create (jobs/mask.hpp); ini_threshold is required.\n"
      "mask(map_array, ini_threshold, ...) is the in-memory version.",
      "dict(mask (array of out), out, box, angpix, volume_fraction)",
      [](K& o, const py::kwargs& kw) { o.threshold_given = kw.contains("ini_threshold"); });

  using F = FscJobOptions;
  def_job<F>(
      m, "fsc", "FscJobOptions",
      {REGULA_FIELD(F, map1), REGULA_FIELD(F, map2), REGULA_FIELD(F, mask), REGULA_FIELD(F, out_root),
       REGULA_FIELD(F, angpix), REGULA_FIELD(F, align), REGULA_FIELD(F, threads)},
      [](const F& o) { return fsc_compare(o); },
      [](const F&, FscJobResult r) {
        py::dict d;
        d["fsc"] = vec_to_numpy(std::move(r.fsc));
        d["box"] = r.box;
        d["angpix"] = r.angpix;
        d["resolution_0143"] = r.resolution_0143;
        d["star"] = r.star;
        d["png"] = r.png;
        d["aligned"] = r.aligned;
        d["rot"] = r.rot;
        d["tilt"] = r.tilt;
        d["psi"] = r.psi;
        d["mirrored"] = r.mirrored;
        d["shift"] = py::make_tuple(r.shift[0], r.shift[1], r.shift[2]);
        d["correlation"] = r.correlation;
        return d;
      },
      "FSC between two map files, optionally masked, as relion_image_handler --fsc (jobs/fsc.hpp).\n"
      "fsc(a, b) on arrays is the in-memory version.",
      "dict(fsc, box, angpix, resolution_0143, star, png; with align: aligned, rot, tilt, psi, mirrored, shift, correlation)");

  using C = Class2DOptions;
  def_job<C>(
      m, "class2d", "Class2DOptions",
      {REGULA_FIELD(C, input), REGULA_FIELD(C, out_root), REGULA_FIELD(C, classes), REGULA_FIELD(C, reference),
       REGULA_FIELD(C, iterations),
       REGULA_FIELD(C, tau2_fudge), REGULA_FIELD(C, particle_diameter), REGULA_FIELD(C, ctf),
       REGULA_FIELD(C, zero_mask), REGULA_FIELD(C, flatten_solvent), REGULA_FIELD(C, psi_step),
       REGULA_FIELD(C, offset_range), REGULA_FIELD(C, offset_step), REGULA_FIELD(C, offset_sigma),
       REGULA_FIELD(C, oversampling),
       REGULA_FIELD(C, threads), REGULA_FIELD(C, seed),
       REGULA_FIELD(C, continue_from), REGULA_FIELD(C, angpix), REGULA_FIELD(C, norm), REGULA_FIELD(C, scale),
       REGULA_FIELD(C, ini_high), REGULA_FIELD(C, incr_size), REGULA_FIELD(C, center_classes),
       REGULA_FIELD(C, reseed_until), REGULA_FIELD(C, reseed_empty), REGULA_FIELD(C, batch_size), REGULA_FIELD(C, mask_edge)},
      [](const C& o) { return run_class2d(o); },
      [](const C&, Class2DResult r) {
        py::dict d;
        int n = r.classes.empty() ? 0 : r.classes.front().nx();
        Grid<float> stack(n, n, int(r.classes.size()));
        for (size_t k = 0; k < r.classes.size(); ++k)
          std::copy(r.classes[k].begin(), r.classes[k].end(), stack.section(int(k)));
        d["classes"] = to_numpy(std::move(stack), true);
        d["class_fraction"] = vec_to_numpy(std::move(r.class_fraction));
        d["particle_class"] = vec_to_numpy(std::move(r.particle_class));
        d["particle_psi"] = vec_to_numpy(std::move(r.particle_psi));
        d["particle_origin_x"] = vec_to_numpy(std::move(r.particle_origin_x));
        d["particle_origin_y"] = vec_to_numpy(std::move(r.particle_origin_y));
        d["posterior_sum"] = vec_to_numpy(std::move(r.posterior_sum));
        py::list stats;
        for (const auto& s : r.stats) {
          py::dict it;
          it["iteration"] = s.iteration;
          it["resolution"] = s.resolution_A;
          it["current_shells"] = s.current_shells;
          it["log_likelihood"] = s.log_likelihood;
          it["average_pmax"] = s.average_pmax;
          it["seconds"] = s.seconds;
          it["estep_flops"] = s.estep_flops;
          it["fine_flops"] = s.fine_flops;
          stats.append(it);
        }
        d["iterations"] = stats;
        d["last_iteration"] = r.last_iteration;
        d["data_star"] = r.data_star;
        d["model_star"] = r.model_star;
        d["optimiser_star"] = r.optimiser_star;
        d["classes_mrcs"] = r.classes_mrcs;
        d["gallery_png"] = r.gallery_png;
        return d;
      },
      "Reference-free 2D classification (jobs/class2d.hpp); files ROOT_itNNN_* of every iteration.",
      "dict(classes (K, n, n) array, class_fraction, particle_class (1-based), particle_psi (degrees),\n"
      "particle_origin_x/y (Å), posterior_sum, iterations, last_iteration, data_star, model_star,\n"
      "optimiser_star, classes_mrcs, gallery_png)");

  using L = SelectOptions;
  def_job<L>(
      m, "select", "SelectOptions",
      {REGULA_FIELD(L, input), REGULA_FIELD(L, output), REGULA_FIELD(L, classes), REGULA_FIELD(L, min_count),
       REGULA_FIELD(L, automatic), REGULA_FIELD(L, auto_min_contrast), REGULA_FIELD(L, auto_max_contrast),
       REGULA_FIELD(L, auto_max_edge), REGULA_FIELD(L, auto_particle_sd), REGULA_FIELD(L, particle_diameter),
       REGULA_FIELD(L, auto_no_image_tests), REGULA_FIELD(L, auto_step), REGULA_FIELD(L, threads)},
      [](const L& o) { return select_classes(o); },
      [](const L& o, size_t count) {
        py::dict d;
        d["count"] = count;
        d["output"] = o.output;
        return d;
      },
      "Particles of some classes of a class2d data.star (jobs/class2d.hpp): classes=[1, 3], min_count=N or\n"
      "automatic=True (jobs/class_selection.hpp's score; also writes OUTPUT_class_scores.star).",
      "dict(count, output)");

  using T = Class3DOptions;
  def_job<T>(
      m, "class3d", "Class3DOptions",
      {REGULA_FIELD(T, input), REGULA_FIELD(T, out_root), REGULA_FIELD(T, reference), REGULA_FIELD(T, classes),
       REGULA_FIELD(T, iterations), REGULA_FIELD(T, tau2_fudge), REGULA_FIELD(T, pad), REGULA_FIELD(T, ini_high),
       REGULA_FIELD(T, firstiter_cc), REGULA_FIELD(T, sym), REGULA_FIELD(T, particle_diameter), REGULA_FIELD(T, ctf),
       REGULA_FIELD(T, flatten_solvent), REGULA_FIELD(T, solvent_mask), REGULA_FIELD(T, zero_mask),
       REGULA_FIELD(T, healpix_order),
       REGULA_FIELD(T, offset_range), REGULA_FIELD(T, offset_step), REGULA_FIELD(T, skip_align),
       REGULA_FIELD(T, sigma_ang), REGULA_FIELD(T, threads), REGULA_FIELD(T, seed), REGULA_FIELD(T, continue_from),
       REGULA_FIELD(T, angpix), REGULA_FIELD(T, norm), REGULA_FIELD(T, scale), REGULA_FIELD(T, incr_size),
       REGULA_FIELD(T, mask_edge), REGULA_FIELD(T, adaptive_fraction), REGULA_FIELD(T, max_significants), REGULA_FIELD(T, strict_highres_exp),
       REGULA_FIELD(T, oversampling), REGULA_FIELD(T, staged), REGULA_FIELD(T, perturb)},
      [](const T& o) { return run_class3d(o); },
      [](const T&, Class3DResult r) {
        py::dict d;
        d["last_iteration"] = r.last_iteration;
        d["class_fraction"] = vec_to_numpy(std::move(r.class_fraction));
        d["class_resolution"] = vec_to_numpy(std::move(r.class_resolution_A));
        d["particle_class"] = vec_to_numpy(std::move(r.particle_class));
        d["class_maps"] = r.class_maps;
        d["data_star"] = r.data_star;
        d["model_star"] = r.model_star;
        d["optimiser_star"] = r.optimiser_star;
        d["png"] = r.png;
        return d;
      },
      "3D classification (jobs/class3d.hpp).",
      "dict(last_iteration, class_fraction, class_resolution (Å), particle_class (1-based), class_maps,\n"
      "data_star, model_star, optimiser_star, png)");

  using G = Refine3DOptions;
  def_job<G>(
      m, "refine3d", "Refine3DOptions",
      {REGULA_FIELD(G, input), REGULA_FIELD(G, out_root), REGULA_FIELD(G, reference), REGULA_FIELD(G, ini_high),
       REGULA_FIELD(G, firstiter_cc), REGULA_FIELD(G, sym), REGULA_FIELD(G, particle_diameter), REGULA_FIELD(G, ctf),
       REGULA_FIELD(G, flatten_solvent), REGULA_FIELD(G, zero_mask), REGULA_FIELD(G, solvent_mask),
       REGULA_FIELD(G, solvent_correct_fsc),
       REGULA_FIELD(G, healpix_order), REGULA_FIELD(G, auto_local_healpix_order), REGULA_FIELD(G, offset_range),
       REGULA_FIELD(G, offset_step), REGULA_FIELD(G, low_resol_join_halves), REGULA_FIELD(G, threads),
       REGULA_FIELD(G, seed), REGULA_FIELD(G, continue_from), REGULA_FIELD(G, angpix), REGULA_FIELD(G, norm),
       REGULA_FIELD(G, scale), REGULA_FIELD(G, max_iterations), REGULA_FIELD(G, mask_edge),
       REGULA_FIELD(G, max_healpix_order), REGULA_FIELD(G, pad), REGULA_FIELD(G, oversampling),
       REGULA_FIELD(G, adaptive_fraction), REGULA_FIELD(G, max_significants), REGULA_FIELD(G, tau2_fudge), REGULA_FIELD(G, perturb),
       REGULA_FIELD(G, pose_mean), REGULA_FIELD(G, stop_after)},
      [](const G& o) { return run_refine3d(o); },
      [](const G&, Refine3DResult r) {
        py::dict d;
        d["converged"] = r.converged;
        d["last_iteration"] = r.last_iteration;
        d["resolution"] = r.resolution_A;
        d["fsc"] = vec_to_numpy(std::move(r.fsc));
        d["rot"] = vec_to_numpy(std::move(r.rot));
        d["tilt"] = vec_to_numpy(std::move(r.tilt));
        d["psi"] = vec_to_numpy(std::move(r.psi));
        d["origin_x"] = vec_to_numpy(std::move(r.origin_x));
        d["origin_y"] = vec_to_numpy(std::move(r.origin_y));
        d["random_subset"] = vec_to_numpy(std::move(r.random_subset));
        py::list stats;
        for (const auto& s : r.stats) {
          py::dict it;
          it["iteration"] = s.iteration;
          it["healpix_order"] = s.healpix_order;
          it["resolution"] = s.resolution_A;
          it["current_shells"] = s.current_shells;
          it["angular_change"] = s.angular_change_deg;
          it["offset_change"] = s.offset_change_A;
          it["average_pmax"] = s.average_pmax;
          it["seconds"] = s.seconds;
          stats.append(it);
        }
        d["iterations"] = stats;
        d["map"] = r.map;
        d["half1_unfil"] = r.half1_unfil;
        d["half2_unfil"] = r.half2_unfil;
        d["data_star"] = r.data_star;
        d["model_star"] = r.model_star;
        d["optimiser_star"] = r.optimiser_star;
        d["angdist_bild"] = r.angdist_bild;
        d["angdist_png"] = r.angdist_png;
        return d;
      },
      "3D auto-refinement with gold-standard FSC (jobs/refine3d.hpp).",
      "dict(converged, last_iteration, resolution (Å), fsc, rot/tilt/psi (degrees), origin_x/y (Å),\n"
      "random_subset, iterations, map, half1_unfil, half2_unfil, data_star, model_star, optimiser_star,\n"
      "angdist_bild, angdist_png)");

  using I = InitialModelOptions;
  def_job<I>(
      m, "initial_model", "InitialModelOptions",
      {REGULA_FIELD(I, input), REGULA_FIELD(I, out_root), REGULA_FIELD(I, classes), REGULA_FIELD(I, sym),
       REGULA_FIELD(I, particle_diameter), REGULA_FIELD(I, ctf), REGULA_FIELD(I, iterations),
       REGULA_FIELD(I, ini_high), REGULA_FIELD(I, healpix_order), REGULA_FIELD(I, offset_range),
       REGULA_FIELD(I, offset_step), REGULA_FIELD(I, tau2_fudge), REGULA_FIELD(I, max_significants),
       REGULA_FIELD(I, threads), REGULA_FIELD(I, seed),
       REGULA_FIELD(I, continue_from), REGULA_FIELD(I, angpix), REGULA_FIELD(I, grad_em_iters),
       REGULA_FIELD(I, grad_ini_subset), REGULA_FIELD(I, grad_fin_subset), REGULA_FIELD(I, grad_ini_frac),
       REGULA_FIELD(I, grad_fin_frac), REGULA_FIELD(I, grad_ini_stepsize), REGULA_FIELD(I, grad_stepsize),
       REGULA_FIELD(I, grad_write_iter), REGULA_FIELD(I, strict_highres_exp), REGULA_FIELD(I, tau2_fudge_scheme)},
      [](const I& o) { return run_initial_model(o); },
      [](const I&, InitialModelResult r) {
        py::dict d;
        d["map"] = r.map;
        d["data_star"] = r.data_star;
        d["class_maps"] = r.class_maps;
        d["class_fraction"] = vec_to_numpy(std::move(r.class_fraction));
        d["symmetry_correlation"] = r.symmetry_correlation;
        return d;
      },
      "De novo initial model by mini-batch then full-batch EM from a featureless sphere (jobs/initial_model.hpp).",
      "dict(map, data_star, class_maps, class_fraction, symmetry_correlation)");

  using Q = PostprocessOptions;
  def_job<Q>(
      m, "postprocess", "PostprocessOptions",
      {REGULA_FIELD(Q, half1), REGULA_FIELD(Q, half2), REGULA_FIELD(Q, out_root), REGULA_FIELD(Q, mask),
       REGULA_FIELD(Q, angpix), REGULA_FIELD(Q, auto_bfac), REGULA_FIELD(Q, autob_lowres),
       REGULA_FIELD(Q, autob_highres), REGULA_FIELD(Q, adhoc_bfac), REGULA_FIELD(Q, mtf), REGULA_FIELD(Q, mtf_angpix),
       REGULA_FIELD(Q, low_pass), REGULA_FIELD(Q, randomize_at_fsc), REGULA_FIELD(Q, skip_fsc_weighting),
       REGULA_FIELD(Q, force_mask), REGULA_FIELD(Q, filter_edge_width), REGULA_FIELD(Q, seed),
       REGULA_FIELD(Q, threads), REGULA_FIELD(Q, locres), REGULA_FIELD(Q, locres_sampling),
       REGULA_FIELD(Q, locres_maskrad), REGULA_FIELD(Q, locres_edgwidth), REGULA_FIELD(Q, locres_randomize_at),
       REGULA_FIELD(Q, locres_minres), REGULA_FIELD(Q, locres_randomisations), REGULA_FIELD(Q, locres_fsc_box)},
      [](const Q& o) { return run_postprocess(o); },
      [](const Q&, PostprocessResult r) {
        py::dict d;
        d["resolution"] = r.final_resolution;
        d["bfactor"] = r.bfactor;
        d["guinier_slope"] = r.slope;
        d["guinier_intercept"] = r.intercept;
        d["guinier_correlation"] = r.correlation;
        d["randomise_from"] = r.randomise_from;
        d["fsc_corrected"] = vec_to_numpy(std::move(r.fsc_corrected));
        d["fsc_unmasked"] = vec_to_numpy(std::move(r.fsc_unmasked));
        d["fsc_masked"] = vec_to_numpy(std::move(r.fsc_masked));
        d["fsc_random_masked"] = vec_to_numpy(std::move(r.fsc_random_masked));
        d["map"] = r.map;
        d["masked_map"] = r.masked_map;
        d["star"] = r.star;
        d["fsc_png"] = r.fsc_png;
        d["guinier_png"] = r.guinier_png;
        d["locres_map"] = r.locres_map;
        d["locres_filtered"] = r.locres_filtered;
        d["locres_star"] = r.locres_star;
        d["locres_histogram"] = r.locres_histogram;
        return d;
      },
      "Post-processing of two unfiltered half maps as relion_postprocess (jobs/postprocess.hpp).",
      "dict(resolution (Å), bfactor (Å^2), guinier_slope/intercept/correlation, randomise_from (Å),\n"
      "fsc_corrected, fsc_unmasked, fsc_masked, fsc_random_masked, map, masked_map, star, fsc_png, guinier_png,\n"
      "locres_map, locres_filtered, locres_star, locres_histogram (with locres=True, the only outputs))");

  using Lr = LocresOptions;
  def_job<Lr>(
      m, "locres", "LocresOptions",
      {REGULA_FIELD(Lr, half1), REGULA_FIELD(Lr, half2), REGULA_FIELD(Lr, out_root), REGULA_FIELD(Lr, mask),
       REGULA_FIELD(Lr, angpix), REGULA_FIELD(Lr, adhoc_bfac), REGULA_FIELD(Lr, mtf), REGULA_FIELD(Lr, mtf_angpix),
       REGULA_FIELD(Lr, sampling), REGULA_FIELD(Lr, maskrad), REGULA_FIELD(Lr, edgwidth), REGULA_FIELD(Lr, randomize_at),
       REGULA_FIELD(Lr, minres), REGULA_FIELD(Lr, filter_edge_width), REGULA_FIELD(Lr, randomisations), REGULA_FIELD(Lr, fsc_box), REGULA_FIELD(Lr, seed),
       REGULA_FIELD(Lr, threads)},
      [](const Lr& o) { return run_locres(o); },
      [](const Lr&, LocresResult r) {
        py::dict d;
        d["locres"] = read_map(r.locres_map);
        d["locres_map"] = r.locres_map;
        d["filtered_map"] = r.filtered_map;
        d["fscs_star"] = r.fscs_star;
        d["histogram_png"] = r.histogram_png;
        d["points"] = r.points;
        d["min_resolution"] = r.min_resolution;
        d["max_resolution"] = r.max_resolution;
        d["mask_percentiles"] = r.mask_percentiles;
        return d;
      },
      "Local resolution from two half maps as relion_postprocess --locres (jobs/locres.hpp).",
      "dict(locres (array of locres_map, Å), locres_map, filtered_map, fscs_star, histogram_png, points,\n"
      "min_resolution, max_resolution (Å, over the sampling points), mask_percentiles (5/25/50/75/95 %))");

  using E = SymmetryExpandOptions;
  def_job<E>(
      m, "symmetry_expand", "SymmetryExpandOptions",
      {REGULA_FIELD(E, input), REGULA_FIELD(E, output), REGULA_FIELD(E, sym), REGULA_FIELD(E, helix),
       REGULA_FIELD(E, twist), REGULA_FIELD(E, rise), REGULA_FIELD(E, asu), REGULA_FIELD(E, frac_sampling),
       REGULA_FIELD(E, frac_range)},
      [](const E& o) { return symmetry_expand(o); },
      [](const E& o, SymmetryExpandResult r) {
        py::dict d;
        d["output"] = o.output;
        d["particles_in"] = r.particles_in;
        d["particles_out"] = r.particles_out;
        d["copies"] = r.copies;
        return d;
      },
      "One row per symmetry copy of each particle as relion_particle_symmetry_expand (jobs/symmetry_expand.hpp):\n"
      "sym='C4' (point group) or helix=True with twist, rise and asu or frac_sampling.",
      "dict(output, particles_in, particles_out, copies)");

  using MB = MultibodyOptions;
  def_job<MB>(
      m, "multibody", "MultibodyOptions",
      {REGULA_FIELD(MB, continue_from), REGULA_FIELD(MB, bodies), REGULA_FIELD(MB, out_root),
       REGULA_FIELD(MB, healpix_order), REGULA_FIELD(MB, oversampling), REGULA_FIELD(MB, offset_range),
       REGULA_FIELD(MB, offset_step), REGULA_FIELD(MB, max_iterations), REGULA_FIELD(MB, threads), REGULA_FIELD(MB, seed),
       REGULA_FIELD(MB, particle_diameter), REGULA_FIELD(MB, tau2_fudge), REGULA_FIELD(MB, adaptive_fraction),
       REGULA_FIELD(MB, pad), REGULA_FIELD(MB, zero_mask), REGULA_FIELD(MB, mask_edge)},
      [](const MB& o) { return run_multibody(o); },
      [](const MB&, MultibodyResult r) {
        py::dict d;
        d["iterations"] = r.iterations;
        d["resolution"] = r.resolution;
        d["data_star"] = r.data_star;
        d["model_star"] = r.model_star;
        d["maps"] = r.maps;
        return d;
      },
      "Multi-body refinement as relion_refine --multibody_masks (jobs/multibody.hpp; the command line's refine3d\n"
      "--continue ... --multibody_masks): continue_from=the consensus's ROOT_itNNN_optimiser.star, bodies=STAR file.",
      "dict(iterations, resolution (Å per body), data_star, model_star, maps (one per body))");

  using FA = FlexAnalyseOptions;
  def_job<FA>(
      m, "flex_analyse", "FlexAnalyseOptions",
      {REGULA_FIELD(FA, data), REGULA_FIELD(FA, bodies), REGULA_FIELD(FA, model), REGULA_FIELD(FA, out_root),
       REGULA_FIELD(FA, do_maps), REGULA_FIELD(FA, components), REGULA_FIELD(FA, maps_per_component),
       REGULA_FIELD(FA, select_component), REGULA_FIELD(FA, select_min), REGULA_FIELD(FA, select_max)},
      [](const FA& o) { return flex_analyse(o); },
      [](const FA&, FlexAnalyseResult r) {
        py::dict d;
        d["variance"] = r.variance;
        d["fraction"] = r.fraction;
        d["eigenvectors"] = r.eigenvectors;
        d["projections"] = r.projections;
        d["maps"] = r.maps;
        d["selection"] = r.selection;
        d["selected"] = r.selected;
        return d;
      },
      "Principal components of the body motions of a multi-body refinement as relion_flex_analyse --PCA_orient\n"
      "(jobs/flex_analyse.hpp).",
      "dict(variance, fraction (per component), eigenvectors, projections ([particle][component]), maps, selection,\n"
      "selected)");

  using U = ParticleSubtractOptions;
  def_job<U>(
      m, "particle_subtract", "ParticleSubtractOptions",
      {REGULA_FIELD(U, optimiser), REGULA_FIELD(U, out_dir), REGULA_FIELD(U, mask), REGULA_FIELD(U, data),
       REGULA_FIELD(U, ignore_class), REGULA_FIELD(U, revert), REGULA_FIELD(U, recenter_on_mask),
       REGULA_FIELD(U, center_x), REGULA_FIELD(U, center_y), REGULA_FIELD(U, center_z), REGULA_FIELD(U, new_box),
       REGULA_FIELD(U, threads)},
      [](const U& o) { return particle_subtract(o); },
      [](const U&, ParticleSubtractResult r) {
        py::dict d;
        d["star"] = r.star;
        d["particles"] = r.particles;
        d["box"] = r.box;
        d["recentred"] = r.recentred;
        d["centre"] = py::make_tuple(r.centre[0], r.centre[1], r.centre[2]);
        return d;
      },
      "Signal subtraction as relion_particle_subtract (jobs/particle_subtract.hpp): optimiser=ROOT_itNNN_optimiser.star,\n"
      "mask of the density to keep; or revert=subtracted STAR file.",
      "dict(star, particles, box, recentred, centre (px from the map centre))");

  using CR = CtfRefineOptions;
  def_job<CR>(
      m, "ctf_refine", "CtfRefineOptions",
      {REGULA_FIELD(CR, particles), REGULA_FIELD(CR, postprocess), REGULA_FIELD(CR, out_dir), REGULA_FIELD(CR, half1),
       REGULA_FIELD(CR, half2), REGULA_FIELD(CR, mask), REGULA_FIELD(CR, angpix_ref), REGULA_FIELD(CR, pad),
       REGULA_FIELD(CR, fit_defocus), REGULA_FIELD(CR, fit_mode), REGULA_FIELD(CR, kmin_defocus),
       REGULA_FIELD(CR, defocus_range), REGULA_FIELD(CR, fit_bfacs), REGULA_FIELD(CR, bfac_per_mg),
       REGULA_FIELD(CR, bfac_min_B), REGULA_FIELD(CR, bfac_max_B), REGULA_FIELD(CR, bfac_min_scale),
       REGULA_FIELD(CR, kmin_bfac), REGULA_FIELD(CR, fit_beamtilt), REGULA_FIELD(CR, kmin_tilt),
       REGULA_FIELD(CR, odd_aberr_max_n), REGULA_FIELD(CR, fit_aberr), REGULA_FIELD(CR, kmin_aberr),
       REGULA_FIELD(CR, even_aberr_max_n), REGULA_FIELD(CR, fit_aniso), REGULA_FIELD(CR, kmin_mag),
       REGULA_FIELD(CR, keep_astig), REGULA_FIELD(CR, mag_iterations), REGULA_FIELD(CR, threads),
       REGULA_FIELD(CR, only_do_unfinished)},
      [](const CR& o) { return ctf_refine(o); },
      [](const CR&, CtfRefineResult r) {
        py::dict d;
        d["star"] = r.star;
        d["particles"] = r.particles;
        d["max_resolution"] = r.max_resolution;
        d["rms_defocus_change"] = r.rms_defocus_change;
        py::list groups;
        for (const auto& g : r.groups) {
          py::dict gd;
          gd["number"] = g.number;
          gd["beam_tilt"] = py::make_tuple(g.beam_tilt[0], g.beam_tilt[1]);
          gd["odd_zernike"] = g.odd;
          gd["even_zernike"] = g.even;
          gd["mag"] = py::make_tuple(g.mag[0], g.mag[1], g.mag[2], g.mag[3]);
          gd["scale"] = g.scale;
          groups.append(gd);
        }
        d["groups"] = groups;
        return d;
      },
      "CTF refinement as relion_ctf_refine (jobs/ctf_refine.hpp): particles=run_data.star, half1/half2 (or\n"
      "postprocess=postprocess.star), fit_defocus / fit_bfacs / fit_beamtilt / fit_aberr / fit_aniso.",
      "dict(star, particles, max_resolution, rms_defocus_change, groups=[dict(number, beam_tilt, odd_zernike,\n"
      "even_zernike, mag, scale)])");

  using PO = PolishOptions;
  def_job<PO>(
      m, "polish", "PolishOptions",
      {REGULA_FIELD(PO, particles), REGULA_FIELD(PO, out_dir), REGULA_FIELD(PO, postprocess), REGULA_FIELD(PO, half1),
       REGULA_FIELD(PO, half2), REGULA_FIELD(PO, mask), REGULA_FIELD(PO, angpix_ref), REGULA_FIELD(PO, pad),
       REGULA_FIELD(PO, corr_mic), REGULA_FIELD(PO, first_frame), REGULA_FIELD(PO, last_frame), REGULA_FIELD(PO, s_vel),
       REGULA_FIELD(PO, s_div), REGULA_FIELD(PO, s_acc), REGULA_FIELD(PO, params_file), REGULA_FIELD(PO, fdose),
       REGULA_FIELD(PO, range), REGULA_FIELD(PO, max_iters), REGULA_FIELD(PO, combine_frames),
       REGULA_FIELD(PO, bfac_minfreq), REGULA_FIELD(PO, bfac_maxfreq), REGULA_FIELD(PO, bfac_per_frame),
       REGULA_FIELD(PO, only_do_unfinished), REGULA_FIELD(PO, threads), REGULA_FIELD(PO, params2),
       REGULA_FIELD(PO, params3), REGULA_FIELD(PO, align_frac), REGULA_FIELD(PO, eval_frac), REGULA_FIELD(PO, min_p),
       REGULA_FIELD(PO, par_group), REGULA_FIELD(PO, s_vel_0), REGULA_FIELD(PO, s_div_0), REGULA_FIELD(PO, s_acc_0),
       REGULA_FIELD(PO, in_step), REGULA_FIELD(PO, conv), REGULA_FIELD(PO, par_iters), REGULA_FIELD(PO, seed)},
      [](const PO& o) { return polish(o); },
      [](const PO&, PolishResult r) {
        py::dict d;
        d["shiny_star"] = r.shiny_star;
        d["bfactors_star"] = r.bfactors_star;
        d["particles"] = r.particles;
        d["skipped"] = r.skipped;
        d["micrographs"] = r.micrographs;
        d["micrographs_skipped"] = r.micrographs_skipped;
        py::list frames;
        for (const auto& f : r.frames) frames.append(py::make_tuple(f.frame, f.bfactor, f.intercept));
        d["frames"] = frames;
        if (!r.params_out.empty()) {
          d["trained"] = py::make_tuple(r.trained[0], r.trained[1], r.trained[2]);
          d["score_start"] = r.score_start;
          d["score_end"] = r.score_end;
          d["params_file"] = r.params_out;
        }
        return d;
      },
      "Bayesian polishing as relion_motion_refine (jobs/polish.hpp): particles=run_data.star, half1/half2 (or\n"
      "postprocess=postprocess.star), corr_mic=corrected_micrographs.star, combine_frames for shiny particles.",
      "dict(shiny_star, bfactors_star, particles, skipped, micrographs, micrographs_skipped,\n"
      "frames=[(frame, bfactor, intercept)]; with params2/params3: trained=(s_vel, s_div, s_acc), score_start,\n"
      "score_end, params_file)");

  // The micrograph jobs (the front end): movies to particles.
  using SM = SimulateMoviesOptions;
  def_job<SM>(
      m, "simulate_movies", "SimulateMoviesOptions",
      {REGULA_FIELD(SM, maps), REGULA_FIELD(SM, fractions), REGULA_FIELD(SM, out_dir), REGULA_FIELD(SM, movies),
       REGULA_FIELD(SM, nx), REGULA_FIELD(SM, ny), REGULA_FIELD(SM, angpix), REGULA_FIELD(SM, frames),
       REGULA_FIELD(SM, dose_per_frame), REGULA_FIELD(SM, preexposure), REGULA_FIELD(SM, voltage), REGULA_FIELD(SM, cs),
       REGULA_FIELD(SM, amplitude_contrast), REGULA_FIELD(SM, bfactor), REGULA_FIELD(SM, defocus_min),
       REGULA_FIELD(SM, defocus_max), REGULA_FIELD(SM, astigmatism_max), REGULA_FIELD(SM, particles),
       REGULA_FIELD(SM, ice_rms), REGULA_FIELD(SM, aggregates), REGULA_FIELD(SM, ice_crystals), REGULA_FIELD(SM, carbon),
       REGULA_FIELD(SM, drift_min), REGULA_FIELD(SM, drift_max), REGULA_FIELD(SM, local_max), REGULA_FIELD(SM, gain),
       REGULA_FIELD(SM, gain_rot), REGULA_FIELD(SM, gain_flip), REGULA_FIELD(SM, hot_pixels), REGULA_FIELD(SM, format),
       REGULA_FIELD(SM, mode), REGULA_FIELD(SM, tiff_bits), REGULA_FIELD(SM, lzw), REGULA_FIELD(SM, ideal),
       REGULA_FIELD(SM, damage), REGULA_FIELD(SM, seed), REGULA_FIELD(SM, threads)},
      [](const SM& o) { return simulate_movies(o); },
      [](const SM&, SimulateMoviesResult r) {
        py::dict d;
        d["movies_star"] = r.movies_star;
        d["truth_micrographs"] = r.truth_micrographs;
        d["truth_particles"] = r.truth_particles;
        d["gain"] = r.gain;
        d["movie_files"] = r.movie_files;
        d["particles"] = r.particles;
        return d;
      },
      "Movies with ground truth (jobs/simulate_movies.hpp; maps=[...] is --i).",
      "dict(movies_star, truth_micrographs, truth_particles, gain, movie_files, particles)");

  using MC = MotioncorrOptions;
  def_job<MC>(
      m, "motioncorr", "MotioncorrOptions",
      {REGULA_FIELD(MC, input), REGULA_FIELD(MC, out_dir), REGULA_FIELD(MC, first_frame), REGULA_FIELD(MC, last_frame),
       REGULA_FIELD(MC, bin_factor), REGULA_FIELD(MC, bfactor), REGULA_FIELD(MC, gainref), REGULA_FIELD(MC, gain_rot),
       REGULA_FIELD(MC, gain_flip), REGULA_FIELD(MC, defect_file), REGULA_FIELD(MC, patch_x), REGULA_FIELD(MC, patch_y),
       REGULA_FIELD(MC, group_frames), REGULA_FIELD(MC, dose_weighting), REGULA_FIELD(MC, angpix),
       REGULA_FIELD(MC, voltage), REGULA_FIELD(MC, dose_per_frame), REGULA_FIELD(MC, preexposure),
       REGULA_FIELD(MC, save_noDW), REGULA_FIELD(MC, skip_defect), REGULA_FIELD(MC, max_iter), REGULA_FIELD(MC, contrast_window),
       REGULA_FIELD(MC, grouping_for_ps), REGULA_FIELD(MC, ps_size), REGULA_FIELD(MC, only_unfinished),
       REGULA_FIELD(MC, dose_motionstats_cutoff), REGULA_FIELD(MC, threads), REGULA_FIELD(MC, seed)},
      [](const MC& o) { return motioncorr(o); },
      [](const MC&, MotioncorrResult r) { return micrograph_counts(r); },
      "Beam-induced motion correction as relion_run_motioncorr --use_own (jobs/motioncorr.hpp).",
      "dict(star, done, skipped, failed)");

  using CF = CtffindOptions;
  def_job<CF>(
      m, "ctffind", "CtffindOptions",
      {REGULA_FIELD(CF, input), REGULA_FIELD(CF, out_dir), REGULA_FIELD(CF, box), REGULA_FIELD(CF, res_min),
       REGULA_FIELD(CF, res_max), REGULA_FIELD(CF, df_min), REGULA_FIELD(CF, df_max), REGULA_FIELD(CF, df_step),
       REGULA_FIELD(CF, astigmatism), REGULA_FIELD(CF, use_given_ps), REGULA_FIELD(CF, use_noDW),
       REGULA_FIELD(CF, only_unfinished), REGULA_FIELD(CF, cs), REGULA_FIELD(CF, voltage),
       REGULA_FIELD(CF, amplitude_contrast), REGULA_FIELD(CF, angpix), REGULA_FIELD(CF, threads)},
      [](const CF& o) { return ctffind(o); },
      [](const CF&, CtffindResult r) { return micrograph_counts(r); },
      "CTF estimation of micrographs, as RELION's CtfFind job (jobs/ctffind.hpp).", "dict(star, done, skipped, failed)");

  using AP = AutopickOptions;
  def_job<AP>(
      m, "autopick", "AutopickOptions",
      {REGULA_FIELD(AP, input), REGULA_FIELD(AP, out_dir), REGULA_FIELD(AP, pickname), REGULA_FIELD(AP, angpix),
       REGULA_FIELD(AP, log), REGULA_FIELD(AP, log_diam_min), REGULA_FIELD(AP, log_diam_max),
       REGULA_FIELD(AP, log_neighbour), REGULA_FIELD(AP, log_invert), REGULA_FIELD(AP, log_adjust_threshold),
       REGULA_FIELD(AP, log_upper_threshold), REGULA_FIELD(AP, log_max_search), REGULA_FIELD(AP, log_use_ctf),
       REGULA_FIELD(AP, ref), REGULA_FIELD(AP, select_classes), REGULA_FIELD(AP, angpix_ref),
       REGULA_FIELD(AP, particle_diameter), REGULA_FIELD(AP, shrink_particle_mask), REGULA_FIELD(AP, psi_step),
       REGULA_FIELD(AP, invert), REGULA_FIELD(AP, ctf), REGULA_FIELD(AP, ctf_intact_first_peak),
       REGULA_FIELD(AP, threshold), REGULA_FIELD(AP, min_distance), REGULA_FIELD(AP, max_stddev_noise),
       REGULA_FIELD(AP, min_avg_noise), REGULA_FIELD(AP, healpix_order), REGULA_FIELD(AP, sym),
       REGULA_FIELD(AP, lowpass), REGULA_FIELD(AP, highpass), REGULA_FIELD(AP, shrink),
       REGULA_FIELD(AP, skip_optimise_scale), REGULA_FIELD(AP, outlier_removal_zscore), REGULA_FIELD(AP, skip_side),
       REGULA_FIELD(AP, only_unfinished), REGULA_FIELD(AP, seed), REGULA_FIELD(AP, threads)},
      [](const AP& o) { return autopick(o); },
      [](const AP&, AutopickResult r) {
        py::dict d;
        d["list_star"] = r.list_star;
        d["picks"] = r.picks;
        d["done"] = r.done;
        d["skipped"] = r.skipped;
        d["failed"] = r.failed;
        d["pick_files"] = r.pick_files;
        return d;
      },
      "Particle picking, LoG (log=True) or templates (ref=), as relion_autopick (jobs/autopick.hpp).",
      "dict(list_star, picks, done, skipped, failed, pick_files)");

  using EX = ExtractOptions;
  def_job<EX>(
      m, "extract", "ExtractOptions",
      {REGULA_FIELD(EX, input), REGULA_FIELD(EX, out_dir), REGULA_FIELD(EX, coord_dir), REGULA_FIELD(EX, coord_suffix),
       REGULA_FIELD(EX, coord_list), REGULA_FIELD(EX, reextract), REGULA_FIELD(EX, recenter),
       REGULA_FIELD(EX, recenter_x), REGULA_FIELD(EX, recenter_y), REGULA_FIELD(EX, recenter_z),
       REGULA_FIELD(EX, ref_angpix), REGULA_FIELD(EX, reset_offsets), REGULA_FIELD(EX, keep_ctfs_micrographs),
       REGULA_FIELD(EX, extract_size), REGULA_FIELD(EX, scale), REGULA_FIELD(EX, window), REGULA_FIELD(EX, norm),
       REGULA_FIELD(EX, bg_radius), REGULA_FIELD(EX, no_ramp), REGULA_FIELD(EX, white_dust),
       REGULA_FIELD(EX, black_dust), REGULA_FIELD(EX, invert_contrast), REGULA_FIELD(EX, float16),
       REGULA_FIELD(EX, bias_x), REGULA_FIELD(EX, bias_y), REGULA_FIELD(EX, only_unfinished), REGULA_FIELD(EX, angpix),
       REGULA_FIELD(EX, seed), REGULA_FIELD(EX, threads)},
      [](const EX& o) { return extract(o); },
      [](const EX&, ExtractResult r) {
        py::dict d;
        d["star"] = r.star;
        d["particles"] = r.particles;
        d["micrographs"] = r.micrographs;
        d["done"] = r.done;
        d["skipped"] = r.skipped;
        d["failed"] = r.failed;
        d["outside"] = r.outside;
        return d;
      },
      "Particle extraction from micrographs, as relion_preprocess --extract (jobs/extract.hpp).",
      "dict(star, particles, micrographs, done, skipped, failed, outside)");

  using Im = ImportOptions;
  def_job<Im>(
      m, "import_", "ImportOptions",
      {REGULA_FIELD(Im, kind), REGULA_FIELD(Im, input), REGULA_FIELD(Im, out_dir), REGULA_FIELD(Im, out_file),
       REGULA_FIELD(Im, optics_group_name), REGULA_FIELD(Im, optics_group_mtf), REGULA_FIELD(Im, angpix),
       REGULA_FIELD(Im, voltage), REGULA_FIELD(Im, cs), REGULA_FIELD(Im, q0), REGULA_FIELD(Im, beamtilt_x),
       REGULA_FIELD(Im, beamtilt_y), REGULA_FIELD(Im, particles_optics_group_name), REGULA_FIELD(Im, continue_run)},
      [](const Im& o) { return run_import(o); },
      [](const Im&, ImportResult r) {
        py::dict d;
        d["output"] = r.output;
        d["files"] = r.files;
        d["items"] = r.items;
        d["new_items"] = r.new_items;
        d["optics_group"] = r.optics_group;
        return d;
      },
      "Import as relion_import (jobs/import.hpp): kind='movies' (or micrographs, coordinates, halfmaps, particles,\n"
      "other), input='Movies/*.tiff' (a wildcard or a file), out_dir, optics group values; continue_run=True adds\n"
      "the files not yet listed. (import_: 'import' is a Python keyword.)",
      "dict(output, files, items, new_items, optics_group)");

  m.def("job_options", [](const std::string& name) {
    auto it = job_registry().find(name);
    if (it == job_registry().end()) {
      std::string names;
      for (const auto& [k, v] : job_registry()) names += (names.empty() ? "" : ", ") + k;
      throw py::value_error("job_options: no job '" + name + "' (jobs: " + names + ")");
    }
    return it->second();
  }, py::arg("job"), "The keywords a job accepts with their defaults, e.g. job_options('class2d')");
  m.def("jobs", [] {
    std::vector<std::string> names;
    for (const auto& [k, v] : job_registry()) names.push_back(k);
    return names;
  }, "Names of the jobs");
}

}  // namespace regula::python
