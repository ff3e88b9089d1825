// Checkpoints through the optimizer handles (via grass.hpp): export mid-training (even between
// two micro-batches), keep training N steps, import into fresh optimizers, train the same N
// steps: the weights and the states are bit-identical. The blob's counters (format 3: the last
// step's outcome, then one Adam step count per state row, or one for a dense parameter) hold
// what the training did. A damaged blob, one of another shape or kind, or one with a
// semantically broken field (an index past d, a negative step count, an unknown outcome) is
// rejected with GRASS_ERROR_BAD_CHECKPOINT and changes nothing; so is a blob of another layer
// of the same shape (its layer id differs). A whole set of optimizers goes through one file
// (grass::checkpoint_save / checkpoint_load), refused whole when damaged, cut short or given
// the optimizers in another order.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <climits>
#include <cstdint>
#include <cstring>
#include <vector>

#include "testkit.hpp"

namespace {

constexpr int64_t kTokens = 12;
constexpr float kLr = 0.02f;

// One parameter of a toy model: its optimizer, its weight, and how to produce its gradient.
struct Param {
  grass::Optimizer opt;
  std::vector<uint8_t> w;  // bytes of the weight in w_dtype
  int64_t m, n;            // GRASS layers: X is tokens x n, dY is tokens x m
  int64_t numel;           // dense parameters
  grass::Dtype w_dtype, grad_dtype;
  bool sparse;
};

std::vector<uint8_t> random_bytes(tk_rng* rng, grass::Dtype dtype, int64_t count) {
  auto d = static_cast<grass_dtype>(dtype);
  std::vector<uint8_t> out(static_cast<size_t>(count) * tk_size(d));
  for (int64_t i = 0; i < count; ++i) {
    tk_store(out.data(), d, static_cast<size_t>(i), tk_nonzero(rng));
  }
  return out;
}

// The three kinds of parameter, freshly created (weights depend only on `seed`).
std::vector<Param> make_params(const grass::Context& ctx, uint64_t seed) {
  std::vector<Param> ps;
  tk_rng rng{seed};
  {  // rows, multinomial_nr, states carried across refreshes
    auto pc = grass::ProjectionConfig()
                  .side(grass::Side::Rows)
                  .rank(5)
                  .method(grass::Method::MultinomialNr)
                  .refresh_every(3)
                  .seed(7)
                  .layer_id(1);
    auto ac = grass::AdamWConfig().refresh_mode(grass::RefreshMode::Carry).weight_decay(0.01f);
    ps.push_back(Param{grass::Optimizer::sparse(ctx, pc, ac, 16, 8, kTokens, grass::Dtype::F32,
                                                grass::Dtype::F32),
                       random_bytes(&rng, grass::Dtype::F32, 16 * 8), 16, 8, 0,
                       grass::Dtype::F32, grass::Dtype::F32, true});
  }
  {  // auto side (columns), multinomial with repeats, bf16 weights and states
    auto pc = grass::ProjectionConfig().rank(6).method(grass::Method::Multinomial).refresh_every(4);
    auto ac = grass::AdamWConfig().state_dtype(grass::Dtype::Bf16).alpha(0.25f);
    ps.push_back(Param{grass::Optimizer::sparse(ctx, pc, ac, 8, 20, kTokens, grass::Dtype::Bf16,
                                                grass::Dtype::Bf16),
                       random_bytes(&rng, grass::Dtype::Bf16, 8 * 20), 8, 20, 0,
                       grass::Dtype::Bf16, grass::Dtype::Bf16, true});
  }
  {  // a dense parameter with f16 gradients
    auto ac = grass::AdamWConfig().weight_decay(0.1f);
    ps.push_back(Param{grass::Optimizer::dense(ctx, ac, 24, grass::Dtype::F32, grass::Dtype::F16),
                       random_bytes(&rng, grass::Dtype::F32, 24), 0, 0, 24, grass::Dtype::F32,
                       grass::Dtype::F16, false});
  }
  return ps;
}

// Micro-batch `micro` of step `step` for parameter `p`: a deterministic function of its inputs.
void feed(Param& p, size_t which, int step, int micro) {
  tk_rng rng{static_cast<uint64_t>(1000 * step + 10 * micro) + which};
  if (p.sparse) {
    auto x = random_bytes(&rng, p.w_dtype, kTokens * p.n);
    auto dy = random_bytes(&rng, p.w_dtype, kTokens * p.m);
    p.opt.backward(kTokens, x.data(), dy.data());
  }
}

void finish(Param& p, size_t which, int step) {
  if (p.sparse) {
    p.opt.step(p.w.data(), kLr);
  } else {
    tk_rng rng{static_cast<uint64_t>(7777 * step) + which};
    auto grad = random_bytes(&rng, p.grad_dtype, p.numel);
    p.opt.step(p.w.data(), grad.data(), kLr);
  }
}

// Steps [from, to); the first one's first micro-batch has already been fed when `fed` is set.
void train(std::vector<Param>& ps, int from, int to, bool fed) {
  for (int step = from; step < to; ++step) {
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!(fed && step == from)) feed(ps[i], i, step, 0);
      feed(ps[i], i, step, 1);
      finish(ps[i], i, step);
    }
  }
}

uint64_t fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t read_u64(const std::vector<uint8_t>& b, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[at + static_cast<size_t>(i)];
  return v;
}

void write_u64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  for (size_t i = 0; i < 8; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

int32_t read_i32(const std::vector<uint8_t>& b, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | b[at + static_cast<size_t>(i)];
  int32_t out = 0;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

void write_i32(std::vector<uint8_t>& b, size_t at, int32_t value) {
  uint32_t v = 0;
  std::memcpy(&v, &value, sizeof v);
  for (size_t i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

// Blob format 3: a header of 17 little-endian u64 fields (the second is the format, the last the
// layer id), then the
// counters i32[1 + counts] (the last step's GRASS_STEP_* outcome, then the step count of each of
// the r state rows of a GRASS layer, or the one count of a dense parameter), M, V, and for a
// GRASS layer the r selected indices, the r previous indices, the r scales and the accumulator;
// last an FNV-1a-64 checksum of everything before it.
constexpr uint64_t kFormat = 3;
constexpr size_t kHeader = 17 * 8;
constexpr size_t kOutcomeAt = kHeader;

// Offset of step count j (0-based) in the counters section.
constexpr size_t count_at(size_t j) { return kHeader + 4 * (1 + j); }

// A tampered blob gets a fresh checksum, so that import reaches the field under test.
void reseal(std::vector<uint8_t>& b) { write_u64(b, b.size() - 8, fnv1a(b.data(), b.size() - 8)); }

void round_trip() {
  auto ctx = grass::Context::cpu();
  auto a = make_params(ctx, 1);
  train(a, 0, 5, false);
  // checkpoint in the middle of step 5: its first micro-batch is already accumulated
  for (size_t i = 0; i < a.size(); ++i) feed(a[i], i, 5, 0);
  std::vector<std::vector<uint8_t>> blobs, weights;
  std::vector<grass_optimizer_info> infos;
  for (auto& p : a) {
    blobs.push_back(p.opt.export_state());
    weights.push_back(p.w);
    infos.push_back(p.opt.info());
    TK_CHECK(blobs.back().size() == p.opt.state_size());
  }
  TK_CHECK(infos[0].accumulated == 1 && infos[0].steps == 5);

  const int kMore = 9;  // crosses several refreshes of both GRASS layers
  train(a, 5, 5 + kMore, true);

  auto b = make_params(ctx, 2);  // other initial weights: everything must come from the blob
  for (size_t i = 0; i < b.size(); ++i) {
    b[i].opt.import_state(blobs[i]);
    b[i].w = weights[i];
    auto info = b[i].opt.info();
    TK_CHECK(info.steps == infos[i].steps);
    TK_CHECK(info.accumulated == infos[i].accumulated);
    TK_CHECK(info.state_elements == infos[i].state_elements);
  }
  train(b, 5, 5 + kMore, true);

  for (size_t i = 0; i < a.size(); ++i) {
    TK_CHECK(a[i].w.size() == b[i].w.size());
    TK_SAME_BYTES(a[i].w.data(), b[i].w.data(), a[i].w.size());
    auto ea = a[i].opt.export_state();
    auto eb = b[i].opt.export_state();
    TK_CHECK(ea.size() == eb.size());
    TK_SAME_BYTES(ea.data(), eb.data(), ea.size());
  }
  // the selections agree too
  for (size_t i = 0; i < 2; ++i) {
    auto ia = a[i].opt.projection().info();
    auto ib = b[i].opt.projection().info();
    TK_CHECK(ia.refresh_count == ib.refresh_count && ia.refresh_count >= 3);
    TK_CHECK(ia.steps_since_refresh == ib.steps_since_refresh);
    auto sa = a[i].opt.projection().selection();
    auto sb = b[i].opt.projection().selection();
    TK_SAME_BYTES(sa.indices, sb.indices, static_cast<size_t>(ia.rank) * sizeof(int32_t));
    TK_SAME_BYTES(sa.scales, sb.scales, static_cast<size_t>(ia.rank) * sizeof(float));
  }
}

// What the counters hold after training: the last outcome, and each state row's count.
void counters() {
  auto ctx = grass::Context::cpu();
  auto ps = make_params(ctx, 4);
  train(ps, 0, 4, false);
  for (auto& p : ps) {
    const auto blob = p.opt.export_state();
    TK_CHECK(read_u64(blob, 8) == kFormat);
    TK_CHECK(read_i32(blob, kOutcomeAt) == GRASS_STEP_APPLIED);
  }
  // ps[0] carries its states (refresh_every 3, rank 5 of 16 rows without repeats): the refresh
  // before step 3 kept the rows still selected, with their 3 steps, and zeroed the entering
  // rows, so after 4 steps a row counts 4 if its index was selected before and 1 if it entered.
  {
    const auto blob = ps[0].opt.export_state();
    const size_t r = 5;
    const size_t state_bytes =
        static_cast<size_t>(ps[0].opt.info().state_elements) *
        grass_dtype_size(static_cast<grass_dtype>(grass::AdamWConfig().state_dtype()));
    const size_t idx_at = count_at(r) + 2 * state_bytes;
    const auto sel = ps[0].opt.projection().selection();
    std::vector<int32_t> now(r), prev(r);
    for (size_t j = 0; j < r; ++j) {
      now[j] = read_i32(blob, idx_at + 4 * j);
      prev[j] = read_i32(blob, idx_at + 4 * (r + j));
      TK_CHECK(now[j] == sel.indices[j]);
    }
    TK_CHECK(ps[0].opt.projection().info().refresh_count == 2);
    for (size_t j = 0; j < r; ++j) {
      const bool kept = std::find(prev.begin(), prev.end(), now[j]) != prev.end();
      const int32_t t = read_i32(blob, count_at(j));
      if (t != (kept ? 4 : 1)) {
        tk_fail_at(__FILE__, __LINE__, "a carried row keeps its count, an entering row restarts");
        std::printf("     row %zu (index %d, %s): count %d\n", j, now[j],
                    kept ? "kept" : "entered", t);
      }
    }
  }
  // ps[1] resets its states (refresh_every 4): no refresh since the first, every row counts 4
  {
    const auto blob = ps[1].opt.export_state();
    for (size_t j = 0; j < 6; ++j) TK_CHECK(read_i32(blob, count_at(j)) == 4);
    // and one more step, after the reset refresh, restarts every row at 1
    train(ps, 4, 5, false);
    const auto after = ps[1].opt.export_state();
    for (size_t j = 0; j < 6; ++j) TK_CHECK(read_i32(after, count_at(j)) == 1);
  }
  // ps[2] is dense: one count
  TK_CHECK(read_i32(ps[2].opt.export_state(), count_at(0)) == 5);
}

void rejected_blobs() {
  auto ctx = grass::Context::cpu();
  auto ps = make_params(ctx, 3);
  train(ps, 0, 4, false);
  auto& target = ps[0];
  const auto before = target.opt.export_state();
  const auto unchanged = [&](int line) {
    auto now = target.opt.export_state();
    if (now != before) {
      tk_fail_at(__FILE__, line, "a rejected import changed the optimizer");
    }
  };

  auto damaged = before;
  damaged[damaged.size() / 2] ^= 0x01;  // inside M or V
  TK_THROWS(target.opt.import_state(damaged), GRASS_ERROR_BAD_CHECKPOINT, "checksum");
  unchanged(__LINE__);

  auto truncated = before;
  truncated.pop_back();
  TK_THROWS(target.opt.import_state(truncated), GRASS_ERROR_BAD_CHECKPOINT, "bytes");
  unchanged(__LINE__);
  TK_THROWS(target.opt.import_state(before.data(), 0), GRASS_ERROR_BAD_CHECKPOINT, nullptr);
  unchanged(__LINE__);

  // another kind of optimizer (dense), and another shape with the same blob size
  TK_THROWS(target.opt.import_state(ps[2].opt.export_state()), GRASS_ERROR_BAD_CHECKPOINT,
            nullptr);
  unchanged(__LINE__);
  auto same_size = grass::Optimizer::sparse(
      ctx, grass::ProjectionConfig().side(grass::Side::Cols).rank(5).refresh_every(3),
      grass::AdamWConfig().refresh_mode(grass::RefreshMode::Carry), 8, 16, kTokens,
      grass::Dtype::F32, grass::Dtype::F32);
  auto other = same_size.export_state();
  TK_CHECK(other.size() == before.size());
  TK_THROWS(target.opt.import_state(other), GRASS_ERROR_BAD_CHECKPOINT, "m differs");
  unchanged(__LINE__);
  // another dtype of the states (the target's are the default's)
  const grass::Dtype other_dtype = grass::AdamWConfig().state_dtype() == grass::Dtype::Bf16
                                       ? grass::Dtype::F32
                                       : grass::Dtype::Bf16;
  auto other_states = grass::Optimizer::sparse(
      ctx, grass::ProjectionConfig().side(grass::Side::Rows).rank(5),
      grass::AdamWConfig().state_dtype(other_dtype), 16, 8, kTokens, grass::Dtype::F32,
      grass::Dtype::F32);
  TK_THROWS(target.opt.import_state(other_states.export_state()), GRASS_ERROR_BAD_CHECKPOINT,
            nullptr);
  unchanged(__LINE__);

  // Blobs whose checksum is valid but whose content is not. The offsets follow blob format 3
  // (see kFormat).
  TK_CHECK(read_u64(before, 8) == kFormat);
  const size_t r = 5;
  const size_t state_bytes =
      static_cast<size_t>(target.opt.info().state_elements) *
      grass_dtype_size(static_cast<grass_dtype>(grass::AdamWConfig().state_dtype()));
  const size_t idx_at = count_at(r) + 2 * state_bytes;  // after the counters, M and V
  {  // an index past d
    auto forged = before;
    forged[idx_at + 4 * 4] = 0xff;  // last index of 5 becomes >= 16
    forged[idx_at + 4 * 4 + 1] = 0x7f;
    reseal(forged);
    TK_THROWS(target.opt.import_state(forged), GRASS_ERROR_BAD_CHECKPOINT, "indices");
    unchanged(__LINE__);
  }
  for (size_t j : {size_t{0}, size_t{2}, r - 1}) {  // a negative step count of any row
    for (int32_t bad : {-1, INT32_MIN}) {
      auto forged = before;
      write_i32(forged, count_at(j), bad);
      reseal(forged);
      TK_THROWS(target.opt.import_state(forged), GRASS_ERROR_BAD_CHECKPOINT, "step count");
      unchanged(__LINE__);
    }
  }
  for (int32_t bad : {-1, 4, 1000}) {  // an outcome that is no GRASS_STEP_*
    auto forged = before;
    write_i32(forged, kOutcomeAt, bad);
    reseal(forged);
    TK_THROWS(target.opt.import_state(forged), GRASS_ERROR_BAD_CHECKPOINT, nullptr);
    unchanged(__LINE__);
  }
  {  // a dense parameter's one count
    auto& dense = ps[2];
    const auto dense_before = dense.opt.export_state();
    TK_CHECK(read_i32(dense_before, count_at(0)) == 4);
    auto forged = dense_before;
    write_i32(forged, count_at(0), -4);
    reseal(forged);
    TK_THROWS(dense.opt.import_state(forged), GRASS_ERROR_BAD_CHECKPOINT, "step count");
    TK_CHECK(dense.opt.export_state() == dense_before);
  }
  // the same kind of forgery with valid values is accepted (the test forges right): each
  // outcome comes back through last_step_outcome (SkippedBadIndices from a CUDA context's blob)
  {
    auto honest = before;
    reseal(honest);
    target.opt.import_state(honest);
    unchanged(__LINE__);
    TK_CHECK(target.opt.last_step_outcome() == grass::StepOutcome::Applied);
    const grass::StepOutcome outcomes[] = {grass::StepOutcome::SkippedNonfinite,
                                           grass::StepOutcome::SkippedBadIndices,
                                           grass::StepOutcome::SkippedBadStepCount};
    for (auto outcome : outcomes) {
      auto forged = before;
      write_i32(forged, kOutcomeAt, static_cast<int32_t>(outcome));
      reseal(forged);
      target.opt.import_state(forged);
      TK_CHECK(target.opt.last_step_outcome() == outcome);
      TK_CHECK(target.opt.last_step_skipped());
    }
    auto zero = before;  // a count of 0 is valid (a row that has not stepped yet)
    write_i32(zero, count_at(1), 0);
    reseal(zero);
    target.opt.import_state(zero);
    TK_CHECK(read_i32(target.opt.export_state(), count_at(1)) == 0);
    target.opt.import_state(before);
    unchanged(__LINE__);
  }

  // the target still trains normally afterwards
  train(ps, 4, 6, false);
  TK_CHECK(target.opt.info().steps == 6);
}

std::vector<grass_optimizer*> handles(const std::vector<Param>& ps) {
  std::vector<grass_optimizer*> out;
  for (const auto& p : ps) out.push_back(p.opt.get());
  return out;
}

std::vector<std::vector<uint8_t>> states(const std::vector<Param>& ps) {
  std::vector<std::vector<uint8_t>> out;
  for (const auto& p : ps) out.push_back(p.opt.export_state());
  return out;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A blob of one GRASS layer is refused by another layer of the same shape, naming both.
void other_layer() {
  auto ctx = grass::Context::cpu();
  auto pc = grass::ProjectionConfig().rank(4).side(grass::Side::Rows);
  auto ac = grass::AdamWConfig();
  auto a = grass::Optimizer::sparse(ctx, grass::ProjectionConfig(pc).layer_id(3), ac, 16, 8,
                                    kTokens, grass::Dtype::F32, grass::Dtype::F32);
  auto b = grass::Optimizer::sparse(ctx, grass::ProjectionConfig(pc).layer_id(4), ac, 16, 8,
                                    kTokens, grass::Dtype::F32, grass::Dtype::F32);
  TK_CHECK(a.state_size() == b.state_size());
  auto blob = a.export_state();
  TK_THROWS(b.import_state(blob), GRASS_ERROR_BAD_CHECKPOINT, "layer_id 3");
  TK_THROWS(b.import_state(blob), GRASS_ERROR_BAD_CHECKPOINT, "layer_id 4");
  TK_CHECK(read_u64(blob, kHeader - 8) == 3);
}

// Save a set mid-training, train on, restore it into fresh optimizers, train the same steps:
// bit-identical. A damaged, truncated or reordered file changes no optimizer.
void checkpoint_set() {
  const std::string path = "test_checkpoint_set.grass";
  auto ctx = grass::Context::cpu();
  auto a = make_params(ctx, 4);
  train(a, 0, 5, false);
  grass::checkpoint_save(path, handles(a));
  std::vector<std::vector<uint8_t>> weights;
  for (const auto& p : a) weights.push_back(p.w);
  const int kMore = 7;
  train(a, 5, 5 + kMore, false);

  auto b = make_params(ctx, 5);
  const auto fresh = states(b);
  const auto file = read_file(path);
  TK_CHECK(file.size() > 64);
  const std::string bad = "test_checkpoint_set_bad.grass";
  auto flipped = file;
  flipped[file.size() - 20] ^= 0x04;  // in the last optimizer's state
  write_file(bad, flipped);
  TK_THROWS(grass::checkpoint_load(bad, handles(b)), GRASS_ERROR_BAD_CHECKPOINT, "checksum");
  write_file(bad, std::vector<uint8_t>(file.begin(), file.end() - 9));
  TK_THROWS(grass::checkpoint_load(bad, handles(b)), GRASS_ERROR_BAD_CHECKPOINT, "truncated");
  auto swapped = handles(b);
  std::swap(swapped[0], swapped[1]);
  TK_THROWS(grass::checkpoint_load(path, swapped), GRASS_ERROR_BAD_CHECKPOINT, "optimizers[0]");
  auto fewer = handles(b);
  fewer.pop_back();
  TK_THROWS(grass::checkpoint_load(path, fewer), GRASS_ERROR_BAD_CHECKPOINT, "count");
  TK_CHECK(states(b) == fresh);
  std::remove(bad.c_str());

  grass::checkpoint_load(path, handles(b));
  for (size_t i = 0; i < b.size(); ++i) b[i].w = weights[i];
  train(b, 5, 5 + kMore, false);
  for (size_t i = 0; i < a.size(); ++i) {
    TK_SAME_BYTES(a[i].w.data(), b[i].w.data(), a[i].w.size());
  }
  TK_CHECK(states(a) == states(b));
  std::remove(path.c_str());
}

}  // namespace

int main() {
  tk_run("round_trip", round_trip);
  tk_run("counters", counters);
  tk_run("rejected_blobs", rejected_blobs);
  tk_run("other_layer", other_layer);
  tk_run("checkpoint_set", checkpoint_set);
  return tk_report("test_checkpoint");
}
