// Many steps of real training through grass.hpp: a 2-layer MLP (32 -> 128 -> 16, tanh) fitted to
// a random teacher network, forward and backward by hand. GRASS optimizers on both weight
// matrices (W1 projects its rows, W2 its columns: side auto picks the longer dimension), dense
// AdamW on the biases. The held-out loss must fall below half of its initial value, and every
// step must touch only the selected rows (columns) of each weight.
#include <algorithm>
#include <cmath>
#include <vector>

#include "testkit.hpp"

namespace {

constexpr int kIn = 32, kHidden = 128, kOut = 16, kTeacherHidden = 24;
constexpr int kBatch = 64, kSteps = 300;

using Matrix = std::vector<float>;  // row-major

// out (rows x cols) = a (rows x inner) * b^T (cols x inner) [+ bias]
void matmul_bt(const float* a, const float* b, const float* bias, float* out, int rows, int inner,
               int cols) {
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      float s = bias ? bias[j] : 0.0f;
      for (int k = 0; k < inner; ++k) s += a[i * inner + k] * b[j * inner + k];
      out[i * cols + j] = s;
    }
  }
}

Matrix random_matrix(tk_rng* rng, int rows, int cols, float scale) {
  Matrix m(static_cast<size_t>(rows * cols));
  for (auto& v : m) v = scale * tk_nonzero(rng);
  return m;
}

struct Teacher {
  Matrix a1, a2;
  explicit Teacher(tk_rng* rng)
      : a1(random_matrix(rng, kTeacherHidden, kIn, 1.0f / std::sqrt(float(kIn)))),
        a2(random_matrix(rng, kOut, kTeacherHidden, 1.5f / std::sqrt(float(kTeacherHidden)))) {}

  void batch(tk_rng* rng, Matrix& x, Matrix& y) const {
    x = random_matrix(rng, kBatch, kIn, 1.0f);
    Matrix h(static_cast<size_t>(kBatch * kTeacherHidden));
    matmul_bt(x.data(), a1.data(), nullptr, h.data(), kBatch, kIn, kTeacherHidden);
    for (auto& v : h) v = std::tanh(v);
    y.assign(static_cast<size_t>(kBatch * kOut), 0.0f);
    matmul_bt(h.data(), a2.data(), nullptr, y.data(), kBatch, kTeacherHidden, kOut);
  }
};

struct Mlp {
  Matrix w1, b1, w2, b2;
  Matrix h, y;  // activations of the last forward

  explicit Mlp(tk_rng* rng)
      : w1(random_matrix(rng, kHidden, kIn, 1.0f / std::sqrt(float(kIn)))),
        b1(static_cast<size_t>(kHidden), 0.0f),
        w2(random_matrix(rng, kOut, kHidden, 1.0f / std::sqrt(float(kHidden)))),
        b2(static_cast<size_t>(kOut), 0.0f) {}

  float forward(const Matrix& x, const Matrix& target) {
    h.assign(static_cast<size_t>(kBatch * kHidden), 0.0f);
    matmul_bt(x.data(), w1.data(), b1.data(), h.data(), kBatch, kIn, kHidden);
    for (auto& v : h) v = std::tanh(v);
    y.assign(static_cast<size_t>(kBatch * kOut), 0.0f);
    matmul_bt(h.data(), w2.data(), b2.data(), y.data(), kBatch, kHidden, kOut);
    double loss = 0.0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double e = double(y[i]) - double(target[i]);
      loss += 0.5 * e * e;
    }
    return float(loss / kBatch);
  }
};

// Rows (side rows) or columns (side cols) of `after` that differ from `before`, as a mask.
std::vector<char> changed(const Matrix& before, const Matrix& after, int rows, int cols,
                          bool by_rows) {
  std::vector<char> mask(static_cast<size_t>(by_rows ? rows : cols), 0);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      size_t e = static_cast<size_t>(i * cols + j);
      if (before[e] != after[e]) mask[static_cast<size_t>(by_rows ? i : j)] = 1;
    }
  }
  return mask;
}

// Trains for kSteps and returns the final held-out loss; with `weights` false the weight
// matrices get learning rate 0 (only the biases learn), the baseline GRASS must beat.
float train(bool weights) {
  tk_rng rng{2024};
  Teacher teacher(&rng);
  Mlp net(&rng);
  Matrix test_x, test_y;
  teacher.batch(&rng, test_x, test_y);

  auto ctx = grass::Context::cpu();
  auto adamw = grass::AdamWConfig().weight_decay(0.0f);
  // side AUTO: W1 (128 x 32) projects its rows, W2 (16 x 128) its columns
  auto proj = grass::ProjectionConfig().side(grass::Side::Auto).rank(32).refresh_every(25).seed(1);
  auto opt_w1 = grass::Optimizer::sparse(ctx, grass::ProjectionConfig(proj.raw()).layer_id(1),
                                         adamw, kHidden, kIn, kBatch, grass::Dtype::F32,
                                         grass::Dtype::F32);
  auto opt_w2 = grass::Optimizer::sparse(ctx, grass::ProjectionConfig(proj.raw()).layer_id(2),
                                         adamw, kOut, kHidden, kBatch, grass::Dtype::F32,
                                         grass::Dtype::F32);
  auto opt_b1 = grass::Optimizer::dense(ctx, adamw, kHidden, grass::Dtype::F32, grass::Dtype::F32);
  auto opt_b2 = grass::Optimizer::dense(ctx, adamw, kOut, grass::Dtype::F32, grass::Dtype::F32);
  TK_CHECK(opt_w1.projection().info().side == GRASS_SIDE_ROWS);
  TK_CHECK(opt_w2.projection().info().side == GRASS_SIDE_COLS);

  const float initial = net.forward(test_x, test_y);
  Matrix x, target, dy2, dz1;
  Matrix db1(static_cast<size_t>(kHidden)), db2(static_cast<size_t>(kOut));
  int sparse_violations = 0;
  for (int step = 0; step < kSteps; ++step) {
    teacher.batch(&rng, x, target);
    net.forward(x, target);
    // dL/dy = (y - target) / batch; dL/dz1 = (dL/dy W2) * (1 - h^2); the weight gradients
    // dW = dZ^T X are never formed: the optimizers take X and dZ.
    dy2.assign(net.y.size(), 0.0f);
    for (size_t i = 0; i < dy2.size(); ++i) dy2[i] = (net.y[i] - target[i]) / kBatch;
    const size_t nb = kBatch, nh = kHidden, no = kOut;
    dz1.assign(nb * nh, 0.0f);
    for (size_t t = 0; t < nb; ++t) {
      for (size_t k = 0; k < nh; ++k) {
        float s = 0.0f;
        for (size_t o = 0; o < no; ++o) s += dy2[t * no + o] * net.w2[o * nh + k];
        const float hv = net.h[t * nh + k];
        dz1[t * nh + k] = s * (1.0f - hv * hv);
      }
    }
    std::fill(db1.begin(), db1.end(), 0.0f);
    std::fill(db2.begin(), db2.end(), 0.0f);
    for (size_t t = 0; t < nb; ++t) {
      for (size_t k = 0; k < nh; ++k) db1[k] += dz1[t * nh + k];
      for (size_t o = 0; o < no; ++o) db2[o] += dy2[t * no + o];
    }

    opt_w1.backward(kBatch, x.data(), dz1.data());
    opt_w2.backward(kBatch, net.h.data(), dy2.data());
    Matrix w1_before = net.w1, w2_before = net.w2;
    const float lr = 0.01f;
    opt_w1.step(net.w1.data(), weights ? lr : 0.0f);
    opt_w2.step(net.w2.data(), weights ? lr : 0.0f);
    opt_b1.step(net.b1.data(), db1.data(), lr);
    opt_b2.step(net.b2.data(), db2.data(), lr);

    // structured sparsity: only selected rows of W1 and selected columns of W2 moved
    auto check_sparse = [&](const grass::Optimizer& o, const Matrix& before, const Matrix& after,
                            int rows, int cols, bool by_rows) {
      auto info = o.projection().info();
      auto sel = o.projection().selection();
      std::vector<char> selected(static_cast<size_t>(info.d), 0);
      for (int64_t j = 0; j < info.rank; ++j) selected[static_cast<size_t>(sel.indices[j])] = 1;
      auto moved = changed(before, after, rows, cols, by_rows);
      for (size_t i = 0; i < moved.size(); ++i) {
        if (moved[i] && !selected[i]) ++sparse_violations;
      }
    };
    check_sparse(opt_w1, w1_before, net.w1, kHidden, kIn, true);
    check_sparse(opt_w2, w2_before, net.w2, kOut, kHidden, false);

    if (weights && (step % 50 == 0 || step == kSteps - 1)) {
      std::printf("step %3d  held-out loss %.5f\n", step, double(net.forward(test_x, test_y)));
    }
  }
  const float final_loss = net.forward(test_x, test_y);
  std::printf("%s: held-out loss initial %.5f, final %.5f (ratio %.3f)\n",
              weights ? "GRASS weights + AdamW biases" : "biases only", double(initial),
              double(final_loss), double(final_loss / initial));
  TK_CHECK(std::isfinite(final_loss));
  if (weights) TK_CHECK(final_loss < 0.5f * initial);
  TK_CHECK(sparse_violations == 0);
  TK_CHECK(opt_w1.info().steps == kSteps && opt_b2.info().steps == kSteps);
  TK_CHECK(opt_w1.projection().info().refresh_count == (kSteps + 24) / 25);
  // GRASS state: rank x kept dimension, far below the weights' own size
  TK_CHECK(opt_w1.info().state_elements == 32 * kIn);
  TK_CHECK(opt_w2.info().state_elements == 32 * kOut);
  return final_loss;
}

}  // namespace

int main() {
  tk_run("train", [] {
    const float grass = train(true);
    const float biases_only = train(false);
    TK_CHECK(grass < 0.5f * biases_only);  // the sparse weight updates do the learning
  });
  return tk_report("test_train_mlp");
}
