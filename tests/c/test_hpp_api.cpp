// grass.hpp: ownership (move-only handles), errors as grass::Error with status and message,
// config builders and their defaults, the free functions, every layer-1 op through Context, the
// Projection handle, step outcomes (StepOutcome, last_step_outcome), and that an Optimizer
// handle computes exactly what the same layer-1 ops compose to, its per-row step counts
// included.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "testkit.hpp"

namespace {

template <typename T>
constexpr bool move_only_v = !std::is_copy_constructible_v<T> && !std::is_copy_assignable_v<T> &&
                             std::is_nothrow_move_constructible_v<T> &&
                             std::is_nothrow_move_assignable_v<T>;
static_assert(move_only_v<grass::Context>);
static_assert(move_only_v<grass::Projection>);
static_assert(move_only_v<grass::Optimizer>);
static_assert(std::is_base_of_v<std::runtime_error, grass::Error>);
static_assert(std::is_copy_constructible_v<grass::ProjectionRef>);  // a borrowed view
static_assert(sizeof(grass::Context) == sizeof(void*));              // no overhead over the handle
// StepOutcome mirrors GRASS_STEP_*
static_assert(static_cast<int32_t>(grass::StepOutcome::Applied) == GRASS_STEP_APPLIED);
static_assert(static_cast<int32_t>(grass::StepOutcome::SkippedNonfinite) ==
              GRASS_STEP_SKIPPED_NONFINITE);
static_assert(static_cast<int32_t>(grass::StepOutcome::SkippedBadIndices) ==
              GRASS_STEP_SKIPPED_BAD_INDICES);
static_assert(std::is_same_v<decltype(std::declval<const grass::Optimizer&>().last_step_outcome()),
                             grass::StepOutcome>);
static_assert(std::is_same_v<decltype(std::declval<const grass::Optimizer&>().last_step_skipped()),
                             bool>);

void versions() {
  std::string expect = std::to_string(GRASS_VERSION_MAJOR) + "." +
                       std::to_string(GRASS_VERSION_MINOR) + "." +
                       std::to_string(GRASS_VERSION_PATCH);
  TK_CHECK(expect == grass::version());
  TK_CHECK(grass::abi_version() == GRASS_ABI_VERSION);
  TK_CHECK(grass::abi_compatible());
  TK_CHECK(std::string(grass::status_string(GRASS_ERROR_DTYPE)) ==
           grass_status_string(GRASS_ERROR_DTYPE));
  TK_CHECK(grass::dtype_size(grass::Dtype::Bf16) == 2);
  TK_CHECK(grass::dtype_size(grass::Dtype::F32) == 4);
  auto r = grass::resolve_side(10, 30, grass::Side::Auto);
  TK_CHECK(r.side == grass::Side::Cols && r.d == 30 && r.k == 10);
  TK_THROWS(grass::resolve_side(0, 3, grass::Side::Rows), GRASS_ERROR_INVALID_VALUE, "m = 0");
}

void configs() {
  grass::ProjectionConfig p;
  TK_CHECK(p.raw().struct_size == sizeof(grass_projection_config));
  // the library's defaults (rank 0: the rank rule)
  TK_CHECK(p.side() == grass::Side::Cols && p.rank() == 0 && p.power() == 2);
  TK_CHECK(p.method() == grass::Method::UniformNr && p.scaling() == grass::Scaling::None);
  TK_CHECK(p.refresh_every() == 50 && p.seed() == 0 && p.layer_id() == 0);
  p.side(grass::Side::Rows)
      .rank(5)
      .method(grass::Method::TopR)
      .power(1)
      .scaling(grass::Scaling::None)
      .refresh_every(9)
      .seed(42)
      .layer_id(3);
  TK_CHECK(p.side() == grass::Side::Rows && p.rank() == 5 && p.method() == grass::Method::TopR);
  TK_CHECK(p.power() == 1 && p.scaling() == grass::Scaling::None && p.refresh_every() == 9);
  TK_CHECK(p.seed() == 42 && p.layer_id() == 3 && p.raw().rank == 5);

  grass::AdamWConfig a;
  TK_CHECK(a.raw().struct_size == sizeof(grass_adamw_config));
  TK_CHECK(a.beta1() == 0.9f && a.beta2() == 0.999f && a.eps() == 1e-8f);
  TK_CHECK(a.weight_decay() == 0.0f && a.alpha() == 0.177f);
  TK_CHECK(a.decay_mode() == grass::DecayMode::Selected);
  TK_CHECK(a.refresh_mode() == grass::RefreshMode::Reset && a.state_dtype() == grass::Dtype::Bf16);
  TK_CHECK(a.dense_state_dtype() == grass::Dtype::F32);
  TK_CHECK(a.row_warmup() == 10);
  a.beta1(0.8f)
      .beta2(0.9f)
      .eps(1e-6f)
      .weight_decay(0.1f)
      .decay_mode(grass::DecayMode::Dense)
      .alpha(0.25f)
      .refresh_mode(grass::RefreshMode::Carry)
      .state_dtype(grass::Dtype::F32)
      .dense_state_dtype(grass::Dtype::Bf16)
      .row_warmup(20);
  TK_CHECK(a.row_warmup() == 20);
  TK_CHECK(a.beta1() == 0.8f && a.beta2() == 0.9f && a.eps() == 1e-6f);
  TK_CHECK(a.weight_decay() == 0.1f && a.decay_mode() == grass::DecayMode::Dense);
  TK_CHECK(a.alpha() == 0.25f && a.refresh_mode() == grass::RefreshMode::Carry);
  TK_CHECK(a.state_dtype() == grass::Dtype::F32 && a.dense_state_dtype() == grass::Dtype::Bf16);
  grass::AdamWConfig copy(a.raw());
  TK_CHECK(copy.alpha() == 0.25f && copy.dense_state_dtype() == grass::Dtype::Bf16);
}

void errors_and_ownership() {
  auto ctx = grass::Context::cpu();
  TK_CHECK(static_cast<bool>(ctx));
  TK_CHECK(ctx.device_kind() == grass::DeviceKind::Cpu);

  // an exception carries the status and the library's message, naming function and argument
  try {
    (void)grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(65), grass::AdamWConfig(),
                                   64, 32, 8, grass::Dtype::F32, grass::Dtype::F32);
    tk_fail_at(__FILE__, __LINE__, "rank > d must throw");
  } catch (const grass::Error& e) {
    TK_CHECK(e.status() == GRASS_ERROR_INVALID_VALUE);
    TK_CHECK(std::strstr(e.what(), "grass_optimizer_create_sparse") != nullptr);
    TK_CHECK(std::strstr(e.what(), "rank") != nullptr);
    TK_CHECK(std::string(e.what()) == grass::last_error_message());
    TK_CHECK(std::string(e.status_string()) == grass_status_string(GRASS_ERROR_INVALID_VALUE));
  }
  TK_THROWS(grass::Optimizer::dense(ctx, grass::AdamWConfig().beta1(1.5f), 4, grass::Dtype::F32,
                                    grass::Dtype::F32),
            GRASS_ERROR_INVALID_VALUE, "beta1");
  TK_THROWS(grass::Optimizer::dense(ctx, grass::AdamWConfig().state_dtype(grass::Dtype::F16), 4,
                                    grass::Dtype::F32, grass::Dtype::F32),
            GRASS_ERROR_DTYPE, "state_dtype");
  TK_THROWS(grass::Optimizer::dense(ctx, grass::AdamWConfig().dense_state_dtype(grass::Dtype::F16),
                                    4, grass::Dtype::F32, grass::Dtype::F32),
            GRASS_ERROR_DTYPE, "dense_state_dtype");
  TK_THROWS(grass::Optimizer::dense(ctx, grass::AdamWConfig().row_warmup(-5), 4, grass::Dtype::F32,
                                    grass::Dtype::F32),
            GRASS_ERROR_INVALID_VALUE, "row_warmup = -5");
  TK_THROWS(grass::Projection::create(ctx, grass::ProjectionConfig().rank(3), 8, 8, 4,
                                      static_cast<grass::Dtype>(7)),
            GRASS_ERROR_INVALID_ENUM, "dtype");

  // moving transfers ownership; a moved-from handle is empty and its calls throw
  grass::Context moved = std::move(ctx);
  TK_CHECK(!ctx && moved);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  TK_THROWS(ctx.device_kind(), GRASS_ERROR_NULL_POINTER, "ctx");
  auto opt = grass::Optimizer::dense(moved, grass::AdamWConfig(), 4, grass::Dtype::F32,
                                     grass::Dtype::F32);
  grass::Optimizer other(nullptr);
  other = std::move(opt);
  TK_CHECK(!opt && other);  // NOLINT(bugprone-use-after-move)
  TK_THROWS(opt.info(), GRASS_ERROR_NULL_POINTER, "optimizer");
  TK_CHECK(other.info().is_sparse == 0 && other.info().state_elements == 4);
  TK_THROWS(other.projection(), GRASS_ERROR_INVALID_STATE, "dense");
  TK_THROWS(other.last_step_skipped(), GRASS_ERROR_INVALID_STATE, nullptr);
  TK_THROWS(other.last_step_outcome(), GRASS_ERROR_INVALID_STATE, nullptr);

  // release() hands the handle back to C
  grass_optimizer* raw = other.release();
  TK_CHECK(raw != nullptr && !other);
  grass_optimizer_destroy(raw);

  // CUDA: unavailable here gives CUDA_UNAVAILABLE, with the reason in the message
  auto cuda = grass::cuda_available();
  TK_CHECK(!cuda.reason.empty());
  if (!cuda.available) {
    TK_THROWS(grass::Context::cuda(0), GRASS_ERROR_CUDA_UNAVAILABLE, "grass_context_create_cuda");
  }
}

// scores -> select -> sparse_grad -> state_refresh -> sparse step, through Context, must equal an
// Optimizer handle fed the same batches (same config, same seed), bit for bit; plus the dense
// step against the dense handle.
void layer1_matches_handles() {
  const int64_t m = 24, n = 10, b = 6, r = 5;
  auto ctx = grass::Context::cpu();
  auto pc = grass::ProjectionConfig()
                .side(grass::Side::Rows)
                .rank(r)
                .method(grass::Method::MultinomialNr)
                .refresh_every(2)
                .seed(99)
                .layer_id(4);
  auto ac = grass::AdamWConfig().refresh_mode(grass::RefreshMode::Carry).weight_decay(0.05f);
  auto opt = grass::Optimizer::sparse(ctx, pc, ac, m, n, b, grass::Dtype::F32, grass::Dtype::F32);
  auto dense = grass::Optimizer::dense(ctx, ac, n, grass::Dtype::F32, grass::Dtype::F32);

  tk_rng rng{5};
  std::vector<float> w_ops(static_cast<size_t>(m * n)), bias_ops(static_cast<size_t>(n));
  for (auto& v : w_ops) v = tk_nonzero(&rng);
  for (auto& v : bias_ops) v = tk_nonzero(&rng);
  auto w_opt = w_ops;
  auto bias_opt = bias_ops;

  std::vector<float> scores(static_cast<size_t>(m)), scales(static_cast<size_t>(r));
  std::vector<float> g(static_cast<size_t>(r * n)), ms(g.size()), vs(g.size());
  std::vector<float> bm(static_cast<size_t>(n)), bv(static_cast<size_t>(n));
  std::vector<int32_t> idx(static_cast<size_t>(r)), old_idx(static_cast<size_t>(r));
  std::vector<int32_t> row_steps(static_cast<size_t>(r));  // one count per state row
  int32_t bstep = 0, skipped = -1, bskipped = -1;
  size_t ws_bytes = std::max({ctx.scores_workspace_size(m, n, b, grass::Side::Rows,
                                                        grass::Dtype::F32),
                              ctx.select_workspace_size(m, r),
                              ctx.sparse_grad_workspace_size(m, n, b, grass::Side::Rows, r,
                                                             grass::Dtype::F32),
                              ctx.sparse_adamw_workspace_size(m, n, grass::Side::Rows, r),
                              ctx.state_refresh_workspace_size(ac.refresh_mode(), ac.state_dtype(),
                                                               r, n),
                              ctx.adamw_workspace_size(n)});
  std::vector<unsigned char> ws(ws_bytes);
  uint32_t refreshes = 0;
  bool has_old = false;

  for (int s = 0; s < 7; ++s) {
    std::vector<float> x(static_cast<size_t>(b * n)), dy(static_cast<size_t>(b * m));
    std::vector<float> x2(x.size()), dy2(dy.size()), bgrad(static_cast<size_t>(n));
    for (auto* v : {&x, &x2}) {
      for (auto& e : *v) e = tk_nonzero(&rng);
    }
    for (auto* v : {&dy, &dy2}) {
      for (auto& e : *v) e = tk_nonzero(&rng);
    }
    for (auto& e : bgrad) e = tk_nonzero(&rng);

    // through the handle (two micro-batches)
    TK_CHECK(opt.refresh_due() == (s % 2 == 0));
    opt.backward(b, x.data(), dy.data());
    opt.backward(b, x2.data(), dy2.data());
    opt.step(w_opt.data(), 0.01f);
    dense.step(bias_opt.data(), bgrad.data(), 0.01f);
    TK_CHECK(!opt.last_step_skipped());
    TK_CHECK(opt.last_step_outcome() == grass::StepOutcome::Applied);

    // the same with layer-1 ops
    if (s % 2 == 0) {
      ctx.row_scores(m, n, b, grass::Side::Rows, grass::Dtype::F32, x.data(), dy.data(),
                     scores.data(), ws.data(), ws.size());
      old_idx = idx;
      ctx.select(pc, m, refreshes++, scores.data(), idx.data(), scales.data(), ws.data(),
                 ws.size());
      ctx.state_refresh(ac.refresh_mode(), ac.state_dtype(),
                        r, n, has_old ? old_idx.data() : nullptr, idx.data(), ms.data(),
                        vs.data(), row_steps.data(), ws.data(), ws.size());
      has_old = true;
    }
    ctx.sparse_grad(m, n, b, grass::Side::Rows, r, grass::Dtype::F32, x.data(), dy.data(),
                    idx.data(), scales.data(), g.data(), false, ws.data(), ws.size());
    ctx.sparse_grad(m, n, b, grass::Side::Rows, r, grass::Dtype::F32, x2.data(), dy2.data(),
                    idx.data(), scales.data(), g.data(), true, ws.data(), ws.size());
    ctx.sparse_adamw_step(ac, m, n, grass::Side::Rows, r, grass::Dtype::F32, w_ops.data(),
                          idx.data(), scales.data(), g.data(), ms.data(), vs.data(),
                          row_steps.data(), 0.01f, nullptr, &skipped, ws.data(), ws.size());
    TK_CHECK(skipped == GRASS_STEP_APPLIED);
    ctx.adamw_step(ac, n, grass::Dtype::F32, bias_ops.data(), grass::Dtype::F32, bgrad.data(),
                   bm.data(), bv.data(), &bstep, 0.01f, nullptr, &bskipped, ws.data(), ws.size());
    TK_CHECK(bskipped == GRASS_STEP_APPLIED);

    // the handles' counters (checkpoint format 3: after the 17 u64 header fields, i32 last
    // outcome then the step counts) hold what the layer-1 ops hold: carry moved each row's count
    // with its row and zeroed the entering rows' counts in both
    std::vector<int32_t> want{skipped};
    want.insert(want.end(), row_steps.begin(), row_steps.end());
    auto blob = opt.export_state();
    TK_CHECK(blob.size() >= 17 * 8 + want.size() * 4);
    TK_SAME_BYTES(blob.data() + 17 * 8, want.data(), want.size() * sizeof(int32_t));
    const int32_t dense_want[2] = {bskipped, bstep};
    auto dblob = dense.export_state();
    TK_SAME_BYTES(dblob.data() + 17 * 8, dense_want, sizeof dense_want);

    auto sel = opt.projection().selection();
    TK_SAME_BYTES(sel.indices, idx.data(), idx.size() * sizeof(int32_t));
    TK_SAME_BYTES(sel.scales, scales.data(), scales.size() * sizeof(float));
  }
  TK_SAME_BYTES(w_opt.data(), w_ops.data(), w_ops.size() * sizeof(float));
  TK_SAME_BYTES(bias_opt.data(), bias_ops.data(), bias_ops.size() * sizeof(float));
  auto info = opt.info();
  TK_CHECK(info.is_sparse == 1 && info.steps == 7 && info.accumulated == 0);
  TK_CHECK(info.state_elements == r * n && info.memory_bytes > 0);
  TK_CHECK(opt.projection().info().refresh_count == refreshes);
  TK_CHECK(bstep == 7);
  // after 3 carried refreshes (every 2nd step) the rows' counts range from 1 (entered at the
  // last refresh) to 7 (selected since the first), each at most the number of steps
  for (int32_t t : row_steps) TK_CHECK(t >= 1 && t <= 7);
}

// Why a step did not apply: the outcome through Context (`*skipped`) and through the handles
// (last_step_outcome and last_step_skipped), and back to applied after a good step.
void step_outcomes() {
  const int64_t m = 8, n = 4, r = 3;
  auto ctx = grass::Context::cpu();
  auto ac = grass::AdamWConfig();
  std::vector<float> w(static_cast<size_t>(m * n), 0.5f), g(static_cast<size_t>(r * n), 0.25f);
  std::vector<float> ms(g.size()), vs(g.size()), scales(static_cast<size_t>(r), 1.0f);
  std::vector<int32_t> idx{1, 2, 6}, row_steps{4, 0, 9};
  std::vector<unsigned char> ws(ctx.sparse_adamw_workspace_size(m, n, grass::Side::Rows, r));
  int32_t skipped = -1;
  g[5] = std::nanf("");
  ctx.sparse_adamw_step(ac, m, n, grass::Side::Rows, r, grass::Dtype::F32, w.data(), idx.data(),
                        scales.data(), g.data(), ms.data(), vs.data(), row_steps.data(), 0.01f,
                        nullptr, &skipped, ws.data(), ws.size());
  TK_CHECK(skipped == GRASS_STEP_SKIPPED_NONFINITE);
  TK_CHECK((row_steps == std::vector<int32_t>{4, 0, 9}));  // a skipped step counts nothing
  g[5] = 1.0f;
  ctx.sparse_adamw_step(ac, m, n, grass::Side::Rows, r, grass::Dtype::F32, w.data(), idx.data(),
                        scales.data(), g.data(), ms.data(), vs.data(), row_steps.data(), 0.01f,
                        nullptr, &skipped, ws.data(), ws.size());
  TK_CHECK(skipped == GRASS_STEP_APPLIED);
  TK_CHECK((row_steps == std::vector<int32_t>{5, 1, 10}));
  // a CPU context throws for unsorted indices instead of skipping with SkippedBadIndices
  std::vector<int32_t> unsorted{2, 1, 6};
  skipped = -1;
  TK_THROWS(ctx.sparse_adamw_step(ac, m, n, grass::Side::Rows, r, grass::Dtype::F32, w.data(),
                                  unsorted.data(), scales.data(), g.data(), ms.data(), vs.data(),
                                  row_steps.data(), 0.01f, nullptr, &skipped, ws.data(),
                                  ws.size()),
            GRASS_ERROR_INVALID_VALUE, "indices");
  TK_CHECK(skipped == -1 && (row_steps == std::vector<int32_t>{5, 1, 10}));

  auto dense = grass::Optimizer::dense(ctx, ac, n, grass::Dtype::F32, grass::Dtype::F32);
  std::vector<float> bias(static_cast<size_t>(n), 1.0f), grad(static_cast<size_t>(n), 0.5f);
  dense.step(bias.data(), grad.data(), 0.01f);
  TK_CHECK(dense.last_step_outcome() == grass::StepOutcome::Applied);
  TK_CHECK(!dense.last_step_skipped());
  grad[2] = -INFINITY;
  dense.step(bias.data(), grad.data(), 0.01f);
  TK_CHECK(dense.last_step_outcome() == grass::StepOutcome::SkippedNonfinite);
  TK_CHECK(dense.last_step_skipped());
  grad[2] = 0.5f;
  dense.step(bias.data(), grad.data(), 0.01f);
  TK_CHECK(dense.last_step_outcome() == grass::StepOutcome::Applied);

  const std::string applied = grass::step_outcome_string(grass::StepOutcome::Applied);
  const std::string nonfinite = grass::step_outcome_string(grass::StepOutcome::SkippedNonfinite);
  const std::string bad = grass::step_outcome_string(grass::StepOutcome::SkippedBadIndices);
  TK_CHECK(!applied.empty() && !nonfinite.empty() && !bad.empty());
  TK_CHECK(applied != nonfinite && nonfinite != bad && applied != bad);
}

void projection_handle() {
  const int64_t m = 12, n = 30, b = 5;
  auto ctx = grass::Context::cpu();
  auto pc = grass::ProjectionConfig().rank(4).method(grass::Method::TopR).refresh_every(2);
  auto p = grass::Projection::create(ctx, pc, m, n, b, grass::Dtype::F32);
  auto info = p.info();
  TK_CHECK(info.side == GRASS_SIDE_COLS && info.d == n && info.k == m && info.rank == 4);
  TK_CHECK(info.has_selection == 0 && info.refresh_due == 1 && info.refresh_count == 0);
  TK_THROWS(p.selection(), GRASS_ERROR_INVALID_STATE, "selection");

  tk_rng rng{8};
  std::vector<float> x(static_cast<size_t>(b * n)), dy(static_cast<size_t>(b * m));
  for (auto& e : x) e = tk_nonzero(&rng);
  for (auto& e : dy) e = tk_nonzero(&rng);
  std::vector<float> scores(static_cast<size_t>(n)), g(static_cast<size_t>(4 * m));
  p.scores(b, x.data(), dy.data(), scores.data());
  TK_CHECK(p.info().has_selection == 0);  // scores change nothing
  p.refresh(b, x.data(), dy.data());
  info = p.info();
  TK_CHECK(info.has_selection == 1 && info.refresh_due == 0 && info.refresh_count == 1);
  auto sel = p.selection();
  // top_r from these scores: the 4 largest columns of G
  std::vector<int32_t> order(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(c)];
  });
  std::sort(order.begin(), order.begin() + 4);
  for (size_t j = 0; j < 4; ++j) TK_CHECK(sel.indices[j] == order[j]);

  p.compress(b, x.data(), dy.data(), g.data(), false);
  p.advance();
  TK_CHECK(p.info().steps_since_refresh == 1 && p.info().refresh_due == 0);
  p.advance();
  TK_CHECK(p.info().refresh_due == 1);
  std::vector<float> flat(static_cast<size_t>(n), 1.0f);
  flat[3] = 5.0f;
  p.refresh_from_scores(flat.data());
  sel = p.selection();
  TK_CHECK(sel.indices[0] == 0 && sel.indices[1] == 1 && sel.indices[2] == 2 &&
           sel.indices[3] == 3);
  TK_CHECK(p.info().refresh_count == 2 && p.ref().info().refresh_count == 2);
}

// Data parallelism: two ranks with different batches select identical rows when a due refresh
// is fed the all-reduced (summed) scores, and top_r then picks the largest of those sums.
void shared_scores() {
  constexpr int64_t m = 32, n = 16, b = 8, r = 6;
  auto ctx = grass::Context::cpu();
  auto pc = grass::ProjectionConfig().side(grass::Side::Rows).rank(r).refresh_every(3);
  std::vector<grass::Optimizer> ranks;
  for (int i = 0; i < 2; ++i) {
    ranks.push_back(grass::Optimizer::sparse(ctx, grass::ProjectionConfig(pc.raw()),
                                             grass::AdamWConfig(), m, n, b, grass::Dtype::F32,
                                             grass::Dtype::F32));
  }
  auto top_config = grass::ProjectionConfig(pc.raw()).method(grass::Method::TopR);
  auto top = grass::Optimizer::sparse(ctx, top_config, grass::AdamWConfig(), m, n, b,
                                      grass::Dtype::F32, grass::Dtype::F32);
  tk_rng rng{77};
  std::vector<float> w(size_t(m * n), 0.5f);
  for (int s = 0; s < 7; ++s) {
    std::vector<std::vector<float>> x(2, std::vector<float>(size_t(b * n)));
    std::vector<std::vector<float>> dy(2, std::vector<float>(size_t(b * m)));
    for (int i = 0; i < 2; ++i) {
      for (auto& e : x[size_t(i)]) e = tk_nonzero(&rng);
      for (auto& e : dy[size_t(i)]) e = tk_nonzero(&rng) * float(1 + (i * 7 + s) % 3);
    }
    const bool due = ranks[0].refresh_due();
    TK_CHECK(due == ranks[1].refresh_due() && due == (s % 3 == 0));
    std::vector<float> summed(static_cast<size_t>(m), 0.0f), part(static_cast<size_t>(m));
    if (due) {
      for (int i = 0; i < 2; ++i) {
        ranks[size_t(i)].projection().scores(b, x[size_t(i)].data(), dy[size_t(i)].data(),
                                             part.data());
        for (size_t k = 0; k < part.size(); ++k) summed[k] += part[k];
      }
    }
    for (int i = 0; i < 2; ++i) {
      ranks[size_t(i)].backward(b, x[size_t(i)].data(), dy[size_t(i)].data(),
                                due ? summed.data() : nullptr);
    }
    top.backward(b, x[0].data(), dy[0].data(), due ? summed.data() : nullptr);
    auto s0 = ranks[0].projection().selection();
    auto s1 = ranks[1].projection().selection();
    TK_SAME_BYTES(s0.indices, s1.indices, size_t(r) * sizeof(int32_t));
    TK_SAME_BYTES(s0.scales, s1.scales, size_t(r) * sizeof(float));
    if (due) {
      std::vector<int32_t> order(static_cast<size_t>(m));
      for (int32_t k = 0; k < m; ++k) order[size_t(k)] = k;
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
        return summed[size_t(a)] > summed[size_t(c)];
      });
      std::sort(order.begin(), order.begin() + r);
      auto st = top.projection().selection();
      for (size_t j = 0; j < size_t(r); ++j) TK_CHECK(st.indices[j] == order[j]);
    }
    for (auto& o : ranks) o.step(w.data(), 0.0f);
    top.step(w.data(), 0.0f);
  }
}

// The last error is per thread: a failure on one thread does not replace another's message.
void last_error_per_thread() {
  std::atomic<int> stage{0};
  std::string a_after, b_after;
  auto wait_for = [&](int s) {
    while (stage.load() < s) std::this_thread::yield();
  };
  std::thread a([&] {
    TK_THROWS(grass::resolve_side(0, 4, grass::Side::Rows), GRASS_ERROR_INVALID_VALUE, "m = 0");
    stage = 1;
    wait_for(2);
    a_after = grass::last_error_message();
  });
  std::thread b([&] {
    wait_for(1);
    TK_THROWS(grass::resolve_side(4, -5, grass::Side::Rows), GRASS_ERROR_INVALID_VALUE, "n = -5");
    b_after = grass::last_error_message();
    stage = 2;
  });
  a.join();
  b.join();
  TK_CHECK(a_after.find("m = 0") != std::string::npos);
  TK_CHECK(b_after.find("n = -5") != std::string::npos);
}

// Distinct handles on one context, used from several threads at once, compute exactly what
// they compute one after the other.
void concurrent_handles() {
  constexpr int kThreads = 4, kSteps = 12;
  constexpr int64_t m = 40, n = 24, b = 8;
  auto ctx = grass::Context::cpu();
  auto train = [&](int which, std::vector<float>& w) {
    auto opt = grass::Optimizer::sparse(
        ctx, grass::ProjectionConfig().rank(8).refresh_every(5).layer_id(uint32_t(which)),
        grass::AdamWConfig(), m, n, b, grass::Dtype::F32, grass::Dtype::F32);
    tk_rng rng{uint64_t(100 + which)};
    w.assign(size_t(m * n), 0.0f);
    for (auto& e : w) e = tk_nonzero(&rng);
    std::vector<float> x(size_t(b * n)), dy(size_t(b * m));
    for (int s = 0; s < kSteps; ++s) {
      for (auto& e : x) e = tk_nonzero(&rng);
      for (auto& e : dy) e = tk_nonzero(&rng);
      opt.backward(b, x.data(), dy.data());
      opt.step(w.data(), 0.01f);
    }
  };
  std::vector<std::vector<float>> sequential(kThreads), parallel(kThreads);
  for (int i = 0; i < kThreads; ++i) train(i, sequential[size_t(i)]);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      try {
        train(i, parallel[size_t(i)]);
      } catch (const std::exception& e) {
        std::printf("     thread %d: %s\n", i, e.what());
        ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  TK_CHECK(failures == 0);
  for (int i = 0; i < kThreads; ++i) {
    TK_CHECK(sequential[size_t(i)] == parallel[size_t(i)]);
  }
}

}  // namespace

// The memory plan of a small model against the handles it describes: what they hold plus the
// context's shared workspace; reserving that workspace up front makes creation allocate none.
void memory_plan() {
  auto ctx = grass::Context::cpu();
  std::vector<grass_memory_layer> model = {grass::memory_layer(64, 48, 8, 3),
                                           grass::memory_layer(48, 160, 16, 1),
                                           grass::memory_layer(500, 1, 0, 2)};
  grass::AdamWConfig adamw;
  auto plan = ctx.memory_plan(model, 32, adamw);
  TK_CHECK(ctx.workspace_bytes() == 0);
  ctx.reserve_workspace(static_cast<std::size_t>(plan.grass_workspace_bytes));
  TK_CHECK(ctx.workspace_bytes() == static_cast<std::size_t>(plan.grass_workspace_bytes));
  grass::ProjectionConfig pc;
  std::vector<grass::Optimizer> opts;
  for (const auto& l : model) {
    for (int64_t i = 0; i < l.count; i++) {
      if (l.rank == 0) {
        opts.push_back(grass::Optimizer::dense(ctx, adamw, l.m * l.n, grass::Dtype::Bf16,
                                               grass::Dtype::Bf16));
      } else {
        opts.push_back(grass::Optimizer::sparse(ctx, pc.rank(l.rank), adamw, l.m, l.n, 32,
                                                grass::Dtype::Bf16, grass::Dtype::Bf16));
      }
    }
  }
  int64_t held = 0;
  for (const auto& o : opts) held += o.info().memory_bytes;
  TK_CHECK(held == plan.grass_handle_bytes);
  TK_CHECK(ctx.workspace_bytes() == static_cast<std::size_t>(plan.grass_workspace_bytes));
  TK_CHECK(plan.grass_total_bytes < plan.galore_total_bytes);
  TK_CHECK(plan.galore_total_bytes < plan.adamw_total_bytes);
  model[0].rank = 65;  // more than the projected dimension, 64
  TK_THROWS(ctx.memory_plan(model, 32), GRASS_ERROR_INVALID_VALUE, "layers[0].rank = 65");
}

// The rank rule, full_rank, the squared norm and the scaled step through the wrapper: a dense
// parameter's norm against a double sum, and step_scaled(s) against step() on s * g.
void rank_rule_norm_and_scaled_step() {
  TK_CHECK(grass::default_rank(128) == 64 && grass::default_rank(768) == 384);
  TK_CHECK(grass::default_rank(6) == 6);
  TK_THROWS((void)grass::default_rank(0), GRASS_ERROR_INVALID_VALUE, "d = 0");
  auto ctx = grass::Context::cpu();
  grass::AdamWConfig ac;
  auto layer = grass::Optimizer::sparse(ctx, grass::ProjectionConfig(), ac, 24, 64, 8,
                                        grass::Dtype::F32, grass::Dtype::F32);
  TK_CHECK(layer.projection().info().rank == 32 && layer.info().full_rank == 0);
  auto full = grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(64), ac, 24, 64, 8,
                                       grass::Dtype::F32, grass::Dtype::F32);
  TK_CHECK(full.info().full_rank == 1 && full.projection().info().full_rank == 1);

  const int64_t numel = 1000;
  tk_rng rng{17};
  std::vector<float> g(numel), gs(numel), w0(numel);
  double want = 0.0;
  for (int64_t i = 0; i < numel; ++i) {
    g[static_cast<size_t>(i)] = tk_nonzero(&rng);
    w0[static_cast<size_t>(i)] = tk_nonzero(&rng);
    want += static_cast<double>(g[static_cast<size_t>(i)]) * g[static_cast<size_t>(i)];
  }
  auto a = grass::Optimizer::dense(ctx, ac, numel, grass::Dtype::F32, grass::Dtype::F32);
  auto b = grass::Optimizer::dense(ctx, ac, numel, grass::Dtype::F32, grass::Dtype::F32);
  float sq = 0.0f;
  a.grad_sq_norm(g.data(), &sq);
  TK_CHECK(std::fabs(static_cast<double>(sq) - want) <= 1e-6 * want);
  const float scale = 0.3f;
  for (size_t i = 0; i < g.size(); ++i) gs[i] = scale * g[i];
  auto wa = w0, wb = w0;
  a.step_scaled(wa.data(), g.data(), 1e-2f, scale);
  b.step(wb.data(), gs.data(), 1e-2f);
  TK_SAME_BYTES(wa.data(), wb.data(), wa.size() * sizeof(float));
  TK_THROWS(a.step_scaled(wa.data(), g.data(), 1e-2f, -1.0f), GRASS_ERROR_INVALID_VALUE,
            "grad_scale");
  TK_THROWS(layer.grad_sq_norm(nullptr, &sq), GRASS_ERROR_INVALID_STATE,
            "grass_optimizer_backward");

  // a set of Optimizer objects through one checkpoint file
  std::vector<grass::Optimizer> set;
  set.push_back(std::move(a));
  set.push_back(std::move(b));
  set[0].set_layer_id(10);  // two dense parameters of one size: told apart by their ids
  set[1].set_layer_id(11);
  const std::string path = "test_hpp_api.grass";
  grass::checkpoint_save(path, set);
  const auto before = set[0].export_state();
  set[0].step_scaled(wa.data(), g.data(), 1e-2f, 1.0f);
  TK_CHECK(set[0].export_state() != before);
  grass::checkpoint_load(path, set);
  TK_CHECK(set[0].export_state() == before);
  std::swap(set[0], set[1]);
  TK_THROWS(grass::checkpoint_load(path, set), GRASS_ERROR_BAD_CHECKPOINT, "layer_id 10");
  TK_THROWS(layer.set_layer_id(5), GRASS_ERROR_INVALID_STATE, "layer_id = 5");
  layer.set_layer_id(0);  // its own: accepted
  std::remove(path.c_str());
}

// The full-rank residual through the wrapper: Optimizer::step_residual equals step() plus
// Context::residual_step on the handle's selection (bit for bit), and every column the
// selection leaves out moved by -lr·alpha·s·sign(G) against a double reference.
void residual_step() {
  TK_CHECK(grass::default_residual_scale() == 0.1f);
  auto ctx = grass::Context::cpu();
  grass::AdamWConfig ac;
  const int64_t m = 24, n = 40, b = 6;
  auto a = grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(8), ac, m, n, b,
                                    grass::Dtype::F32, grass::Dtype::F32);
  auto c = grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(8), ac, m, n, b,
                                    grass::Dtype::F32, grass::Dtype::F32);
  tk_rng rng{23};
  std::vector<float> x(static_cast<size_t>(b * n)), dy(static_cast<size_t>(b * m)),
      w0(static_cast<size_t>(m * n));
  for (auto& v : x) v = tk_nonzero(&rng);
  for (auto& v : dy) v = tk_nonzero(&rng);
  for (auto& v : w0) v = tk_nonzero(&rng);
  auto wa = w0, wc = w0;
  const float lr = 1e-2f, scale = 0.2f;
  a.backward(b, x.data(), dy.data());
  a.step_residual(wa.data(), b, x.data(), dy.data(), lr, 1.0f, scale);
  c.backward(b, x.data(), dy.data());
  c.step(wc.data(), lr);
  const int32_t* idx = c.projection().selection().indices;
  const int64_t r = c.projection().info().rank;
  std::vector<int32_t> sel(idx, idx + r);
  std::vector<unsigned char> ws(ctx.residual_workspace_size(m, n, b, grass::Side::Cols,
                                                            grass::Dtype::F32));
  int32_t skipped = 0;
  ctx.residual_step(ac, m, n, b, grass::Side::Cols, r, grass::Dtype::F32, x.data(), dy.data(),
                    grass::Dtype::F32, wc.data(), sel.data(), scale, lr, nullptr, &skipped,
                    ws.data(), ws.size());
  TK_CHECK(skipped == GRASS_STEP_APPLIED);
  TK_SAME_BYTES(wa.data(), wc.data(), wa.size() * sizeof(float));
  const float step = lr * ac.raw().alpha * scale;
  int moved = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (std::find(sel.begin(), sel.end(), static_cast<int32_t>(j)) != sel.end()) continue;
    for (int64_t i = 0; i < m; ++i) {
      double g = 0.0, bound = 0.0;
      for (int64_t t = 0; t < b; ++t) {
        const double p = static_cast<double>(dy[static_cast<size_t>(t * m + i)]) *
                         x[static_cast<size_t>(t * n + j)];
        g += p;
        bound += std::fabs(p);
      }
      ++moved;
      if (std::fabs(g) <= 1e-5 * bound) continue;  // a sign f32 cannot decide
      const float want = w0[static_cast<size_t>(i * n + j)] - step * static_cast<float>((g > 0) - (g < 0));
      TK_CHECK(wa[static_cast<size_t>(i * n + j)] == want);
    }
  }
  TK_CHECK(moved == m * (n - r));
  TK_THROWS(a.step_residual(wa.data(), b, x.data(), dy.data(), lr, 1.0f, -1.0f),
            GRASS_ERROR_INVALID_VALUE, "residual_scale");
  auto d = grass::Optimizer::dense(ctx, ac, 10, grass::Dtype::F32, grass::Dtype::F32);
  TK_THROWS(d.step_residual(wa.data(), b, x.data(), dy.data(), lr), GRASS_ERROR_INVALID_STATE,
            "dense");
}

int main() {
  tk_run("versions", versions);
  tk_run("rank_rule_norm_and_scaled_step", rank_rule_norm_and_scaled_step);
  tk_run("configs", configs);
  tk_run("errors_and_ownership", errors_and_ownership);
  tk_run("layer1_matches_handles", layer1_matches_handles);
  tk_run("step_outcomes", step_outcomes);
  tk_run("projection_handle", projection_handle);
  tk_run("shared_scores", shared_scores);
  tk_run("last_error_per_thread", last_error_per_thread);
  tk_run("concurrent_handles", concurrent_handles);
  tk_run("memory_plan", memory_plan);
  tk_run("residual_step", residual_step);
  return tk_report("test_hpp_api");
}
