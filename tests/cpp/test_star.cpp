// STAR reader/writer and the particle table.
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <gtest/gtest.h>

#include "regula/core/error.hpp"
#include "regula/io/mrc.hpp"
#include "regula/io/star.hpp"
#include "regula/model/particles.hpp"

namespace fs = std::filesystem;
using namespace regula;

namespace {

const std::string kData = REGULA_TEST_DATA;

std::string data(const std::string& name) { return kData + "/" + name; }

// A fresh temporary directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("regula_test_star_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Changes the working directory for the scope.
struct ChDir {
  fs::path old;
  explicit ChDir(const fs::path& p) : old(fs::current_path()) { fs::current_path(p); }
  ~ChDir() { fs::current_path(old); }
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// The message of the InputError thrown by f (fails the test if none).
template <class F>
std::string input_error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected InputError, nothing thrown";
  return {};
}

int run(const std::string& cmd) {
  int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// Every block, table, label and value of two documents are equal.
void expect_same(const star::Document& a, const star::Document& b) {
  ASSERT_EQ(a.blocks.size(), b.blocks.size());
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const auto& x = a.blocks[i];
    const auto& y = b.blocks[i];
    EXPECT_EQ(x.name, y.name);
    ASSERT_EQ(x.more.size(), y.more.size());
    std::vector<const star::Table*> tx{&x}, ty{&y};
    for (const auto& t : x.more) tx.push_back(&t);
    for (const auto& t : y.more) ty.push_back(&t);
    for (size_t t = 0; t < tx.size(); ++t) {
      ASSERT_EQ(tx[t]->is_loop(), ty[t]->is_loop());
      ASSERT_EQ(tx[t]->labels(), ty[t]->labels()) << x.name;
      ASSERT_EQ(tx[t]->rows(), ty[t]->rows()) << x.name;
      for (size_t r = 0; r < tx[t]->rows(); ++r)
        for (int c = 0; c < int(tx[t]->columns()); ++c)
          ASSERT_EQ(tx[t]->value(r, c), ty[t]->value(r, c)) << x.name << " row " << r << " col " << c;
    }
  }
}

}  // namespace

// ------------------------------------------------------------------ parsing

TEST(Star, ParsesRelion31LayoutWithAndWithoutNumbering) {
  const std::string text =
      "\n# version 30001\n\ndata_optics\n\nloop_ \n_rlnOpticsGroup #1 \n_rlnVoltage #2\n"
      "  1   300.0\n\n# version 30001\n\ndata_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n"
      "1@a.mrcs 1.5e4\n2@a.mrcs\t-12.25\r\n";
  auto doc = star::parse(text, "mem.star");
  ASSERT_EQ(doc.blocks.size(), 2u);
  EXPECT_EQ(doc.blocks[0].name, "optics");
  EXPECT_EQ(doc.blocks[0].comments, std::vector<std::string>{"# version 30001"});
  const auto& p = doc.require("particles");
  EXPECT_TRUE(p.is_loop());
  EXPECT_EQ(p.rows(), 2u);
  EXPECT_EQ(p.column("rlnDefocusU"), 1);
  EXPECT_EQ(p.column("_rlnDefocusU"), 1);  // both spellings
  EXPECT_EQ(p.column("rlnNothing"), -1);
  EXPECT_EQ(p.value(1, 0), "2@a.mrcs");
  EXPECT_DOUBLE_EQ(p.number(0, 1), 15000.0);
  EXPECT_DOUBLE_EQ(p.number(1, 1), -12.25);  // CR of the CRLF is whitespace
  EXPECT_EQ(p.line(1), 18u);
  EXPECT_EQ(p.labels(), (std::vector<std::string>{"rlnImageName", "rlnDefocusU"}));
}

TEST(Star, QuotedValuesCommentsAndPairs) {
  const std::string text =
      "data_general\n_rlnFinalResolution   3.5  # a comment\n_name 'it's here'\n"
      "_empty \"\"\n_plus +7\n"
      "data_t\nloop_\n_a\n_b\n_c\n\"x y\" '' plain#not-a-comment\n";
  auto doc = star::parse(text, "q.star");
  const auto& g = doc.require("general");
  EXPECT_FALSE(g.is_loop());
  EXPECT_EQ(g.rows(), 1u);
  EXPECT_EQ(g.get("rlnFinalResolution"), "3.5");
  EXPECT_EQ(g.get("name"), "it's here");  // quote closes only before whitespace
  EXPECT_EQ(g.get("empty"), "");
  EXPECT_DOUBLE_EQ(g.number(0, g.column("plus")), 7.0);
  EXPECT_EQ(g.get("absent", "fallback"), "fallback");
  const auto& t = doc.require("t");
  EXPECT_EQ(t.value(0, 0), "x y");
  EXPECT_EQ(t.value(0, 1), "");
  EXPECT_EQ(t.value(0, 2), "plain#not-a-comment");
  // Written and read back: same values.
  auto again = star::parse(star::to_string(doc), "again.star");
  expect_same(doc, again);
}

TEST(Star, EmptyLoopEmptyBlockAndSeveralTablesPerBlock) {
  const std::string text =
      "data_\nloop_\n_rlnCoordinateX #1\n\ndata_nothing\n\n"
      "data_mixed\n_material.name \"Vitreous ice\"\n_material.density 0.933\nloop_\n_x\n_y\n1 2\n3 4\n"
      "loop_\n_z\n9\n";
  auto doc = star::parse(text, "e.star");
  ASSERT_EQ(doc.blocks.size(), 3u);
  EXPECT_EQ(doc.blocks[0].name, "");
  EXPECT_TRUE(doc.blocks[0].is_loop());
  EXPECT_EQ(doc.blocks[0].rows(), 0u);
  EXPECT_EQ(doc.blocks[0].columns(), 1u);
  EXPECT_EQ(doc.blocks[1].columns(), 0u);
  const auto& m = doc.require("mixed");
  // The primary table is the first loop; the pairs and the second loop are kept.
  EXPECT_TRUE(m.is_loop());
  EXPECT_EQ(m.rows(), 2u);
  ASSERT_EQ(m.more.size(), 2u);
  EXPECT_EQ(m.primary_position, 1u);
  EXPECT_EQ(m.more[0].get("material.name"), "Vitreous ice");
  ASSERT_NE(m.table_with("z"), nullptr);
  EXPECT_EQ(m.table_with("z")->value(0, 0), "9");
  auto again = star::parse(star::to_string(doc), "again.star");
  expect_same(doc, again);
  // The pairs are written before the loop, as in the input.
  std::string s = star::to_string(doc);
  EXPECT_LT(s.find("_material.name"), s.find("loop_\n_x"));
}

TEST(Star, VersionCommentKeptAndAddedForNewBlocks) {
  auto doc = star::parse("data_a\nloop_\n_x\n1\n", "v.star");
  EXPECT_TRUE(doc.blocks[0].comments.empty());
  EXPECT_EQ(star::to_string(doc).find("# version"), std::string::npos);
  star::Document made;
  auto& b = made.add_block("particles");
  b.add_column("rlnAngleRot");
  b.add_row();
  b.set_number(0, 0, 12.5);
  std::string s = star::to_string(made);
  EXPECT_EQ(s.rfind("# version 30001\n\ndata_particles\n\nloop_\n_rlnAngleRot #1\n", 0), 0u) << s;
  EXPECT_NE(s.find("12.5"), std::string::npos);
}

TEST(Star, EditingColumnsRowsAndQuoting) {
  auto doc = star::parse("data_p\nloop_\n_a\n_b\n1.000000 x\n2.5 y\n3 z\n", "edit.star");
  auto& p = doc.require("p");
  // set_column keeps the original text of unchanged numbers.
  p.set_column("a", std::vector<double>{1.0, 2.75, 3.0});
  EXPECT_EQ(p.value(0, 0), "1.000000");
  EXPECT_EQ(p.value(1, 0), "2.75");
  p.set_column("c", std::vector<std::string>{"with space", "", "_under"});
  p.set_column("d", std::vector<int>{7, 8, 9});
  p.set_number(2, p.column("d"), 0.1);
  EXPECT_EQ(p.value(2, p.column("d")), "0.1");  // shortest text that reads back exactly
  p.remove_column("b");
  EXPECT_EQ(p.labels(), (std::vector<std::string>{"a", "c", "d"}));
  p.select_rows({2, 0});
  EXPECT_EQ(p.rows(), 2u);
  EXPECT_EQ(p.value(0, 1), "_under");
  size_t r = p.add_row();
  EXPECT_EQ(r, 2u);
  EXPECT_EQ(p.value(2, 0), "");
  auto again = star::parse(star::to_string(doc), "again.star");
  expect_same(doc, again);
  EXPECT_EQ(star::quote_if_needed("a b"), "\"a b\"");
  EXPECT_EQ(star::quote_if_needed(""), "\"\"");
  EXPECT_EQ(star::quote_if_needed("say\" hi"), "'say\" hi'");
  EXPECT_EQ(star::quote_if_needed("data_x"), "\"data_x\"");
  EXPECT_EQ(star::quote_if_needed("1@x.mrcs"), "1@x.mrcs");
  EXPECT_EQ(star::quote_if_needed("[0.5,-1,0]"), "[0.5,-1,0]");  // RELION's vectors, bare as RELION writes them
  EXPECT_EQ(star::quote_if_needed("[a"), "\"[a\"");
}

TEST(Star, NumberErrorsNameFileLineLabelAndText) {
  auto doc = star::parse("data_p\nloop_\n_rlnDefocusU\n1.5\nabc\n", "num.star");
  const auto& p = doc.require("p");
  std::string msg = input_error_of([&] { p.number(1, 0); });
  EXPECT_NE(msg.find("num.star:5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("_rlnDefocusU"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'abc'"), std::string::npos) << msg;
  msg = input_error_of([&] { p.numbers(0); });
  EXPECT_NE(msg.find("num.star:5"), std::string::npos) << msg;
  msg = input_error_of([&] { p.integer(0, 0); });
  EXPECT_NE(msg.find("expected an integer"), std::string::npos) << msg;
  msg = input_error_of([&] { p.require_column("rlnAngleRot"); });
  EXPECT_NE(msg.find("num.star:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("_rlnAngleRot"), std::string::npos) << msg;
}

TEST(Star, BadInputErrorsNameFileAndLine) {
  struct Case {
    const char* text;
    const char* where;
    const char* what;
  };
  const Case cases[] = {
      {"data_a\nloop_\n_x\n_y\n1 2\n3\n", "bad.star:6:", "expected 2 values (one per label), got 1"},
      {"data_a\nloop_\n_x\n_y\n1 2 3\n", "bad.star:5:", "got 3"},
      {"data_a\nloop_\n_x\n'open\n", "bad.star:4:", "unterminated single quote"},
      {"data_a\n_x \"open\n", "bad.star:2:", "unterminated double quote"},
      {"# c\n12 13\n", "bad.star:2:", "before any data_ block"},
      {"data_a\nloop_\n1 2\n", "bad.star:3:", "loop_ with no labels"},
      {"data_a\nloop_\n\ndata_b\n", "bad.star:2:", "loop_ with no labels"},
      {"data_a\nloop_\n", "bad.star:2:", "loop_ with no labels"},
      {"_x 1\ndata_a\n", "bad.star:1:", "label before any data_ block"},
      {"data_a\n_x\n", "bad.star:2:", "has no value"},
      {"data_a\n_x 1 2\n", "bad.star:2:", "unexpected"},
      {"data_a\n_x 1\n_x 2\n", "bad.star:3:", "duplicate label _x"},
      {"data_a\n_x 1\nvalue\n", "bad.star:3:", "without a label"},
      {"data_a\nsave_frame\n", "bad.star:2:", "save frames"},
      {"data_a\nloop_\n_x\n;text\n", "bad.star:4:", "text fields"},
      {"# only a comment\n", "bad.star:", "no data_ block"},
      {"", "bad.star:", "no data_ block"},
  };
  for (const auto& c : cases) {
    std::string msg = input_error_of([&] { star::parse(c.text, "bad.star"); });
    EXPECT_NE(msg.find(c.where), std::string::npos) << c.text << " -> " << msg;
    EXPECT_NE(msg.find(c.what), std::string::npos) << c.text << " -> " << msg;
  }
  auto doc = star::parse("data_a\n_x 1\ndata_b\n_y 2\n", "blocks.star");
  std::string msg = input_error_of([&] { doc.require("particles"); });
  EXPECT_EQ(msg, "blocks.star: no block data_particles (found: data_a, data_b)");
}

TEST(Star, MissingAndEmptyFiles) {
  TempDir tmp;
  std::string msg = input_error_of([&] { star::read(tmp.file("absent.star")); });
  EXPECT_NE(msg.find("absent.star: file not found"), std::string::npos) << msg;
  write_text(tmp.file("empty.star"), "");
  msg = input_error_of([&] { star::read(tmp.file("empty.star")); });
  EXPECT_NE(msg.find("empty.star: empty file"), std::string::npos) << msg;
  msg = input_error_of([&] { star::read(tmp.path.string()); });
  EXPECT_NE(msg.find("directory"), std::string::npos) << msg;
}

TEST(Star, GarbageNeverCrashes) {
  // Mutations of a valid file: each parse either succeeds or throws InputError.
  std::string base = star::to_string(star::read(data("star/sample_particles_relion31.star")));
  std::mt19937 rng(12345);
  const char alphabet[] = " \t\n\r'\"#_@data_loop_x09.-;\0";
  for (int it = 0; it < 2000; ++it) {
    std::string s = base.substr(0, rng() % base.size());
    int edits = 1 + int(rng() % 8);
    for (int e = 0; e < edits && !s.empty(); ++e)
      s[rng() % s.size()] = (rng() % 2) ? char(rng() % 256) : alphabet[rng() % (sizeof alphabet - 1)];
    try {
      auto doc = star::parse(s, "fuzz.star");
      (void)star::describe(doc);
      auto again = star::parse(star::to_string(doc), "again.star");
      expect_same(doc, again);
    } catch (const InputError&) {
    }
  }
}

TEST(Star, RoundTripOfTestFiles) {
  TempDir tmp;
  for (const auto& entry : fs::directory_iterator(kData + "/star")) {
    if (entry.path().extension() != ".star") continue;
    auto doc = star::read(entry.path().string());
    std::string out = tmp.file(entry.path().filename().string());
    star::write(out, doc);
    auto again = star::read(out);
    SCOPED_TRACE(entry.path().string());
    expect_same(doc, again);
    // Writing again gives the same bytes.
    EXPECT_EQ(star::to_string(doc), star::to_string(again));
    // No temporary file is left behind.
    for (const auto& f : fs::directory_iterator(tmp.path))
      EXPECT_NE(f.path().filename().string().front(), '.') << f.path();
  }
}

TEST(Star, DescribeListsBlocksKindsRowsAndColumns) {
  auto doc = star::read(data("star/bsoft_material.star"));
  std::string d = star::describe(doc);
  EXPECT_NE(d.find("9 blocks"), std::string::npos) << d;
  EXPECT_NE(d.find("data_vitreous_ice: loop, 2 rows, 2 columns"), std::string::npos) << d;
  EXPECT_NE(d.find("+ pairs, 2 items"), std::string::npos) << d;
  EXPECT_NE(d.find("_atom_type.symbol _atom_type.count"), std::string::npos) << d;
  EXPECT_NE(d.find("_material.name = \"Vitreous ice\""), std::string::npos) << d;
}

// ------------------------------------------------------------------ particles

TEST(Particles, ImageNames) {
  auto r = parse_image_name("000012@Extract/job1/a.mrcs");
  EXPECT_EQ(r.index, 12);
  EXPECT_EQ(r.path, "Extract/job1/a.mrcs");
  r = parse_image_name("volume.mrc");
  EXPECT_EQ(r.index, 0);
  EXPECT_EQ(r.path, "volume.mrc");
  for (const char* bad : {"0@a.mrcs", "@a.mrcs", "12@", "x1@a.mrcs", "", "99999999999@a.mrcs"}) {
    std::string msg = input_error_of([&] { parse_image_name(bad, "f.star:3"); });
    EXPECT_EQ(msg.rfind("f.star:3: ", 0), 0u) << bad << " -> " << msg;
  }
  EXPECT_EQ(resolve_image_path("/abs/./x.mrcs"), "/abs/x.mrcs");
  EXPECT_EQ(resolve_image_path("sub/../x.mrcs", "/base"), "/base/x.mrcs");
  EXPECT_EQ(resolve_image_path("x.mrcs"), (fs::current_path() / "x.mrcs").string());
}

TEST(Particles, ReadsRelion31) {
  TempDir tmp;
  ChDir cd(tmp.path);  // image names resolve against the working directory
  auto t = ParticleTable::read(data("relion31_small.star"));
  ASSERT_EQ(t.size(), 4u);
  EXPECT_FALSE(t.converted_from_30());
  ASSERT_EQ(t.optics.size(), 1u);
  const auto& g = t.optics[0];
  EXPECT_EQ(g.number, 1);
  EXPECT_EQ(g.name, "opticsGroup1");
  EXPECT_DOUBLE_EQ(g.pixel_size, 1.5);
  EXPECT_EQ(g.image_size, 16);
  EXPECT_DOUBLE_EQ(g.voltage, 300);
  EXPECT_DOUBLE_EQ(g.cs, 2.7);
  EXPECT_DOUBLE_EQ(g.amplitude_contrast, 0.1);
  EXPECT_EQ(g.dimensionality, 2);
  auto p = t.particle(2);
  EXPECT_EQ(p.image.index, 3);
  EXPECT_EQ(p.image.path, (tmp.path / "stack_float32.mrcs").string());  // NOT tests/data
  EXPECT_EQ(p.micrograph, "mic_002.mrc");
  EXPECT_DOUBLE_EQ(p.defocus_u, 21000.5);
  EXPECT_DOUBLE_EQ(p.defocus_v, 20500.25);
  EXPECT_DOUBLE_EQ(p.defocus_angle, -12.75);
  EXPECT_DOUBLE_EQ(p.phase_shift, 90);
  EXPECT_DOUBLE_EQ(p.rot, 170.25);
  EXPECT_DOUBLE_EQ(p.tilt, 135);
  EXPECT_DOUBLE_EQ(p.psi, -45);
  EXPECT_DOUBLE_EQ(p.origin_x, -4.5);
  EXPECT_DOUBLE_EQ(p.origin_y, 6);
  EXPECT_EQ(p.class_number, 2);
  EXPECT_EQ(p.random_subset, 1);
  EXPECT_DOUBLE_EQ(t.particle(1).ctf_bfactor, 10);
  EXPECT_DOUBLE_EQ(t.particle(1).ctf_scale, 0.9);
  EXPECT_EQ(t.stacks.size(), 1u);
  EXPECT_EQ(t.micrographs.size(), 2u);
  EXPECT_NE(t.where(3).find("relion31_small.star:44 (particle row 4)"), std::string::npos) << t.where(3);
}

TEST(Particles, Relion30ConvertedLikeRelion) {
  // Reference: RELION 3.1.3's own conversion of the same file (relion_star_handler).
  auto t = ParticleTable::read(data("star/sample_particles_relion30.star"));
  auto ref = star::read(data("star/sample_particles_relion30_converted_by_relion.star"));
  EXPECT_TRUE(t.converted_from_30());
  const auto& ro = ref.require("optics");
  ASSERT_EQ(t.optics.size(), ro.rows());
  for (size_t g = 0; g < ro.rows(); ++g) {
    EXPECT_EQ(t.optics[g].number, ro.integer(g, ro.column("rlnOpticsGroup")));
    EXPECT_EQ(t.optics[g].name, ro.value(g, ro.column("rlnOpticsGroupName")));
    EXPECT_DOUBLE_EQ(t.optics[g].voltage, ro.number(g, ro.column("rlnVoltage")));
    EXPECT_DOUBLE_EQ(t.optics[g].cs, ro.number(g, ro.column("rlnSphericalAberration")));
    EXPECT_DOUBLE_EQ(t.optics[g].amplitude_contrast, ro.number(g, ro.column("rlnAmplitudeContrast")));
    // RELION prints 6 decimals; 5e4 / 37369.207031 = 1.33800003 Å.
    EXPECT_NEAR(t.optics[g].pixel_size, ro.number(g, ro.column("rlnImagePixelSize")), 5e-7);
    EXPECT_NEAR(t.optics[g].pixel_size, 5.0e4 / 37369.207031, 1e-12);
  }
  const auto& rp = ref.require("particles");
  ASSERT_EQ(t.size(), rp.rows());
  for (size_t i = 0; i < t.size(); ++i) {
    // Origins in Å printed by RELION with 6 significant digits ("%12.6f" or shorter).
    EXPECT_NEAR(t.origin_x[i], rp.number(i, rp.column("rlnOriginXAngst")), 1e-5) << i;
    EXPECT_NEAR(t.origin_y[i], rp.number(i, rp.column("rlnOriginYAngst")), 1e-5) << i;
    EXPECT_EQ(t.optics[size_t(t.optics_index[i])].number, rp.integer(i, rp.column("rlnOpticsGroup")));
    // RELION re-prints numbers in 12 characters (6 significant digits for small angles).
    double du = rp.number(i, rp.column("rlnDefocusU")), rot = rp.number(i, rp.column("rlnAngleRot"));
    EXPECT_NEAR(t.defocus_u[i], du, 1e-5 * (1 + std::fabs(du)));
    EXPECT_NEAR(t.rot[i], rot, 1e-5 * (1 + std::fabs(rot)));
  }
  // First particle by hand: OriginX 0.1996 px * 1.338 Å/px.
  EXPECT_NEAR(t.origin_x[0], 0.1996 * 5.0e4 / 37369.207031, 1e-12);

  // Written in the 3.1 form; unknown columns kept; read back the same.
  TempDir tmp;
  t.write(tmp.file("out.star"));
  auto doc = star::read(tmp.file("out.star"));
  ASSERT_EQ(doc.blocks.size(), 2u);
  EXPECT_EQ(doc.blocks[0].name, "optics");
  EXPECT_EQ(doc.blocks[1].name, "particles");
  EXPECT_EQ(doc.blocks[1].comments, std::vector<std::string>{"# version 30001"});
  const auto& pb = doc.blocks[1];
  for (const char* gone : {"rlnVoltage", "rlnMagnification", "rlnDetectorPixelSize", "rlnOriginX",
                           "rlnSphericalAberration", "rlnAmplitudeContrast"})
    EXPECT_FALSE(pb.has(gone)) << gone;
  for (const char* kept : {"rlnAutopickFigureOfMerit", "rlnNrOfSignificantSamples", "rlnGroupNumber",
                           "rlnOriginXAngst", "rlnOpticsGroup"})
    EXPECT_TRUE(pb.has(kept)) << kept;
  EXPECT_EQ(pb.value(3, pb.column("rlnLogLikeliContribution")), "1.425883e+05");  // text kept
  auto t2 = ParticleTable::read(tmp.file("out.star"));
  EXPECT_FALSE(t2.converted_from_30());
  ASSERT_EQ(t2.size(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ(t2.origin_x[i], t.origin_x[i]);  // shortest round-trip text: exact
    EXPECT_EQ(t2.optics_index[i], t.optics_index[i]);
    EXPECT_EQ(t2.image_name(i), t.image_name(i));
  }
  EXPECT_EQ(t2.optics[1].voltage, 200);
}

TEST(Particles, Relion31TwoGroupsAndUnknownOpticsColumns) {
  auto t = ParticleTable::read(data("star/sample_particles_relion31.star"));
  ASSERT_EQ(t.optics.size(), 2u);
  EXPECT_DOUBLE_EQ(t.optics[0].voltage, 300);
  EXPECT_DOUBLE_EQ(t.optics[1].voltage, 200);
  EXPECT_DOUBLE_EQ(t.optics[1].pixel_size, 1.4);
  EXPECT_EQ(t.optics[1].image_size, 0);  // not in the file
  EXPECT_DOUBLE_EQ(t.origin_x[0], 0.1996);  // already Å
  TempDir tmp;
  t.write(tmp.file("out.star"));
  auto doc = star::read(tmp.file("out.star"));
  EXPECT_EQ(doc.require("optics").value(1, doc.require("optics").column("rlnMtfFileName")), "mtf_k2_200kV.star");
  EXPECT_FALSE(doc.require("optics").has("rlnImageSize"));
}

TEST(Particles, OriginsPreferAngstromElsePixelsTimesPixelSize) {
  // Both columns: the Å ones win (edited so that they differ).
  auto doc = star::read(data("star/rln_proj_65_centered.star"));
  auto& p = doc.require("particles");
  p.set_value(0, p.column("rlnOriginXAngst"), "1.25");
  p.set_value(0, p.column("rlnOriginX"), "5");
  auto t = ParticleTable::from_document(doc);
  EXPECT_DOUBLE_EQ(t.origin_x[0], 1.25);
  // Only pixels: times the optics pixel size (2 Å/px after editing the file's 1.0).
  auto doc2 = star::read(data("star/rln_proj_65_shifted.star"));
  auto& o = doc2.require("optics");
  o.set_value(0, o.column("rlnImagePixelSize"), "2.0");
  auto t2 = ParticleTable::from_document(doc2);
  const double px[4][2] = {{6, 10}, {10, -5}, {-8, 11}, {-13, -3}};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(t2.origin_x[i], 2 * px[i][0]);
    EXPECT_DOUBLE_EQ(t2.origin_y[i], 2 * px[i][1]);
  }
  TempDir tmp;
  t2.write(tmp.file("o.star"));
  auto out = star::read(tmp.file("o.star"));
  EXPECT_FALSE(out.require("particles").has("rlnOriginX"));
  EXPECT_EQ(out.require("particles").value(3, out.require("particles").column("rlnOriginXAngst")), "-26");
}

TEST(Particles, UnknownPixelSize) {
  const std::string text =
      "data_\nloop_\n_rlnImageName\n_rlnOriginX\n_rlnOriginY\n1@s.mrcs 0 0\n2@s.mrcs 2.5 -1\n";
  std::string msg = input_error_of([&] { ParticleTable::from_document(star::parse(text, "nopix.star")); });
  EXPECT_NE(msg.find("nopix.star:7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pixel size"), std::string::npos) << msg;
  ParticleReadOptions opt;
  opt.angpix = 1.5;
  auto t = ParticleTable::from_document(star::parse(text, "nopix.star"), opt);
  EXPECT_DOUBLE_EQ(t.optics[0].pixel_size, 1.5);
  EXPECT_DOUBLE_EQ(t.origin_x[1], 3.75);
  // No origins at all: pixel size stays 0 (unknown), no error.
  auto t0 = ParticleTable::from_document(star::parse("data_\nloop_\n_rlnImageName\n1@s.mrcs\n", "x.star"));
  EXPECT_EQ(t0.optics[0].pixel_size, 0.0);
}

TEST(Particles, OpticsJoinErrors) {
  const std::string base =
      "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n2 2.0\n"
      "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n1@a.mrcs 2\n2@a.mrcs 1\n";
  auto t = ParticleTable::from_document(star::parse(base, "j.star"));
  EXPECT_EQ(t.optics_index, (std::vector<int>{1, 0}));
  EXPECT_DOUBLE_EQ(t.optics_of(0).pixel_size, 2.0);
  std::string bad = base + "3@a.mrcs 3\n";
  std::string msg = input_error_of([&] { ParticleTable::from_document(star::parse(bad, "j.star")); });
  EXPECT_NE(msg.find("j.star:13"), std::string::npos) << msg;
  EXPECT_NE(msg.find("_rlnOpticsGroup 3 is not in data_optics"), std::string::npos) << msg;
  msg = input_error_of([&] { ParticleTable::from_document(star::parse("data_x\n_a 1\n", "n.star")); });
  EXPECT_NE(msg.find("n.star: no particle table"), std::string::npos) << msg;
  msg = input_error_of([&] {
    ParticleTable::from_document(star::parse("data_\nloop_\n_rlnImageName\n0@a.mrcs\n", "z.star"));
  });
  EXPECT_NE(msg.find("z.star:4"), std::string::npos) << msg;
}

TEST(Particles, SelectAndEditRoundTrip) {
  auto t = ParticleTable::read(data("relion31_small.star"));
  t.rot[1] = 33.5;
  t.origin_x[0] = 0.1;
  t.select({1, 0});
  TempDir tmp;
  t.write(tmp.file("s.star"));
  auto t2 = ParticleTable::read(tmp.file("s.star"));
  ASSERT_EQ(t2.size(), 2u);
  EXPECT_EQ(t2.rot[0], 33.5);
  EXPECT_EQ(t2.origin_x[1], 0.1);
  EXPECT_EQ(t2.image_name(0), "000002@stack_float32.mrcs");
  EXPECT_EQ(t2.particle(0).defocus_u, 16000);
}

TEST(Particles, LazyImagesFromStacks) {
  TempDir tmp;
  ChDir cd(tmp.path);
  Grid<float> stack(8, 6, 3);
  for (size_t k = 0; k < stack.size(); ++k) stack[k] = float(k) * 0.5f - 7.0f;
  mrc::WriteOptions wo;
  wo.is_stack = true;
  mrc::write(tmp.file("stack.mrcs"), stack, wo);
  write_text(tmp.file("p.star"),
             "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n1 1.0\n"
             "data_particles\nloop_\n_rlnImageName\n_rlnOpticsGroup\n"
             "000003@stack.mrcs 1\n1@stack.mrcs 1\n000004@stack.mrcs 1\n1@missing.mrcs 1\n");
  auto t = ParticleTable::read("p.star");
  ParticleImages images(t);
  auto img = images.read(0);
  ASSERT_EQ(img.nx(), 8);
  ASSERT_EQ(img.ny(), 6);
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 8; ++x) EXPECT_EQ(img(x, y), stack(x, y, 2));
  EXPECT_EQ(images.read(1)(3, 2), stack(3, 2, 0));
  std::string msg = input_error_of([&] { images.read(2); });
  EXPECT_NE(msg.find("p.star:12"), std::string::npos) << msg;
  EXPECT_NE(msg.find("image 4 requested but stack stack.mrcs has 3 images (particle row 3 of p.star)"),
            std::string::npos)
      << msg;
  msg = input_error_of([&] { images.read(3); });
  EXPECT_NE(msg.find("p.star:13"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing.mrcs not found"), std::string::npos) << msg;
}

TEST(Particles, RelativeNamesResolveAgainstWorkingDirectoryNotStarDirectory) {
  TempDir tmp;
  fs::create_directories(tmp.path / "sub");
  Grid<float> stack(4, 4, 1, 1.0f);
  mrc::WriteOptions wo;
  wo.is_stack = true;
  mrc::write(tmp.file("sub/s.mrcs"), stack, wo);
  write_text(tmp.file("sub/p.star"), "data_\nloop_\n_rlnImageName\n1@s.mrcs\n");
  {
    ChDir cd(tmp.path);  // s.mrcs is next to the STAR file but not in the working directory
    auto t = ParticleTable::read("sub/p.star");
    ParticleImages images(t);
    std::string msg = input_error_of([&] { images.read(0); });
    EXPECT_NE(msg.find("sub/p.star:4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("relative to the STAR file's directory"), std::string::npos) << msg;
  }
  ChDir cd(tmp.path / "sub");
  auto t = ParticleTable::read("p.star");
  ParticleImages images(t);
  EXPECT_EQ(images.read(0)(1, 1), 1.0f);
}

// ------------------------------------------------------------------ CLI

TEST(StarHandler, RoundTripAndBadInput) {
  TempDir tmp;
  const std::string bin = REGULA_BINARY;
  std::string in = data("star/bsoft_material.star");
  ASSERT_EQ(run(bin + " star_handler --i " + in + " --o " + tmp.file("out.star")), 0);
  expect_same(star::read(in), star::read(tmp.file("out.star")));
  ASSERT_EQ(run(bin + " star_handler --particles --i " + data("star/sample_particles_relion30.star") +
                " --o " + tmp.file("p31.star")),
            0);
  auto conv = star::read(tmp.file("p31.star"));
  EXPECT_NE(conv.find("optics"), nullptr);
  EXPECT_TRUE(conv.require("particles").has("rlnOriginXAngst"));
  // Bad input: exit status 1 and no output file (not even a temporary one).
  write_text(tmp.file("bad.star"), "data_a\nloop_\n_x\n_y\n1 2\n3\n");
  EXPECT_EQ(run(bin + " star_handler --i " + tmp.file("bad.star") + " --o " + tmp.file("never.star")), 1);
  EXPECT_EQ(run(bin + " star_handler --particles --i " + tmp.file("bad.star") + " --o " +
                tmp.file("never.star")),
            1);
  EXPECT_EQ(run(bin + " star_handler --i " + tmp.file("absent.star") + " --o " + tmp.file("never.star")), 1);
  for (const auto& f : fs::directory_iterator(tmp.path))
    EXPECT_EQ(f.path().filename().string().find("never"), std::string::npos) << f.path();
}
