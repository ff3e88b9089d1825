// Checkpoints through the optimizer handles (via grass.hpp): export mid-training (even between
// two micro-batches), keep training N steps, import into fresh optimizers, train the same N
// steps: the weights and the states are bit-identical. A damaged blob, one of another shape or
// kind, or one with a semantically broken field is rejected with GRASS_ERROR_BAD_CHECKPOINT and
// changes nothing.
#include <cstdint>
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
  TK_THROWS(target.opt.import_state(other), GRASS_ERROR_BAD_CHECKPOINT, "field");
  unchanged(__LINE__);
  // another dtype of the states
  auto bf16_states = grass::Optimizer::sparse(
      ctx, grass::ProjectionConfig().side(grass::Side::Rows).rank(5),
      grass::AdamWConfig().state_dtype(grass::Dtype::Bf16), 16, 8, kTokens, grass::Dtype::F32,
      grass::Dtype::F32);
  TK_THROWS(target.opt.import_state(bf16_states.export_state()), GRASS_ERROR_BAD_CHECKPOINT,
            nullptr);
  unchanged(__LINE__);

  // A blob whose checksum is valid but whose selection is not (an index past d). The offsets
  // follow blob format 1: a header of 16 u64 fields, then the counters (8 bytes), M, V, and the
  // r selected indices.
  TK_CHECK(read_u64(before, 8) == 1);
  if (read_u64(before, 8) == 1) {
    auto info = target.opt.info();
    size_t state_bytes = static_cast<size_t>(info.state_elements) * 4;
    size_t idx_at = 16 * 8 + 8 + 2 * state_bytes;
    auto forged = before;
    forged[idx_at + 4 * 4] = 0xff;  // last index of 5 becomes >= 16
    forged[idx_at + 4 * 4 + 1] = 0x7f;
    write_u64(forged, forged.size() - 8, fnv1a(forged.data(), forged.size() - 8));
    TK_THROWS(target.opt.import_state(forged), GRASS_ERROR_BAD_CHECKPOINT, "indices");
    unchanged(__LINE__);
    // and the same kind of forgery with a correct index is accepted (the test forges right)
    auto honest = before;
    write_u64(honest, honest.size() - 8, fnv1a(honest.data(), honest.size() - 8));
    target.opt.import_state(honest);
    unchanged(__LINE__);
  }

  // the target still trains normally afterwards
  train(ps, 4, 6, false);
  TK_CHECK(target.opt.info().steps == 6);
}

}  // namespace

int main() {
  tk_run("round_trip", round_trip);
  tk_run("rejected_blobs", rejected_blobs);
  return tk_report("test_checkpoint");
}
