// grass demo: train a small next-token model with GRASS, checkpoint it, and resume.
//
// The "text" is synthetic: a Markov chain over a vocabulary of 256 tokens in which every token
// is followed by one of a few favourite successors. The model sees one token and predicts the
// next:  embedding (256 x 32) -> W1 (128 x 32) + tanh -> W2 (256 x 128) -> softmax.
// Forward and backward are plain C++ loops; the optimizers come from grass (through grass.hpp):
//   * W1 and W2 use GRASS (top_r selection): each step updates only r selected rows, and its
//     Adam state holds only those r rows (r x n instead of m x n). The weight gradient dY^T X
//     is never formed: the optimizer takes the layer's input X and output gradient dY and
//     computes the r selected rows of it, and re-selects rows every `refresh_every` steps from
//     their gradient norms.
//   * the embedding and the biases use grass's plain (dense) AdamW step.
// The best achievable loss is the chain's conditional entropy; the demo prints it next to the
// loss, then the optimizer memory of each parameter against what dense AdamW needs, then saves
// a checkpoint, trains on, restores the checkpoint into fresh optimizers and checks that the
// resumed run is bit-identical. Last, the same model trained from the same start on the same
// data with dense AdamW on every parameter (its weight gradients formed in full) gives the
// baseline to compare the loss and the optimizer memory with (--no-baseline skips it).
//
//   grass_train_mlp [--steps N] [--resume-steps N] [--checkpoint PATH] [--cpu] [--no-baseline]
//                   [--method top_r|multinomial|multinomial_nr|uniform|uniform_nr]
//                   [--scaling unbiased|none] [--refresh reset|carry] [--refresh-every K]
//
// Runs on a CUDA device when grass can create a CUDA context there (buffers then live in device
// memory), else on the CPU.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device_memory.hpp"
#include "grass.hpp"
#include "mlp_task.hpp"

namespace {

using example::init;
using example::named;
using example::matmul;
using example::matmul_bt;
using example::Rng;

constexpr int kVocab = 256, kEmbed = 32, kHidden = 128, kBatch = 128;
constexpr int kRank1 = 16, kRank2 = 32;
constexpr float kLr = 0.01f;

// How the GRASS layers choose rows and treat their state at a refresh.
struct GrassSettings {
  grass::Method method = grass::ProjectionConfig().method();  // the library's defaults
  grass::Scaling scaling = grass::ProjectionConfig().scaling();
  grass::RefreshMode refresh = grass::AdamWConfig().refresh_mode();
  int64_t refresh_every = 50;
};

// ---- data ------------------------------------------------------------------------------------

// The chain of the header comment: four favourite successors, the remaining 3% spread evenly.
class MarkovText {
 public:
  explicit MarkovText(uint64_t seed) : chain_(seed, kVocab, {0.55, 0.25, 0.12, 0.05}, 0.03) {}

  // Batch number `step`: a deterministic function of `step`, so a resumed run sees the same data.
  void batch(uint64_t step, std::vector<int>& context, std::vector<int>& next) const {
    Rng rng{0x5eed0000u + step * 7919u};
    context.resize(kBatch);
    next.resize(kBatch);
    for (int t = 0; t < kBatch; ++t) chain_.draw(rng, context[size_t(t)], next[size_t(t)]);
  }

  // The loss of a perfect model: the mean conditional entropy (nats).
  double entropy() const { return chain_.entropy(); }

 private:
  example::MarkovChain chain_;
};

// ---- model -----------------------------------------------------------------------------------

struct Model {
  // parameters (row-major, a linear layer's W is out x in)
  std::vector<float> emb, w1, b1, w2, b2;
  // activations and gradients of the current batch
  std::vector<float> x, h, logits;       // x: the batch's embeddings (the input of W1)
  std::vector<float> d_logits, d_z1;     // dY of W2 and of W1
  std::vector<float> d_emb, d_b1, d_b2;  // gradients of the dense parameters
  std::vector<float> d_w1, d_w2;         // full weight gradients: the dense AdamW baseline only

  explicit Model(uint64_t seed) {
    Rng rng{seed};
    emb = init(rng, size_t(kVocab) * kEmbed, 1.0f);
    w1 = init(rng, size_t(kHidden) * kEmbed, std::sqrt(3.0f / kEmbed));
    b1.assign(kHidden, 0.0f);
    w2 = init(rng, size_t(kVocab) * kHidden, std::sqrt(3.0f / kHidden));
    b2.assign(kVocab, 0.0f);
    x.resize(size_t(kBatch) * kEmbed);
    h.resize(size_t(kBatch) * kHidden);
    logits.resize(size_t(kBatch) * kVocab);
    d_logits.resize(logits.size());
    d_z1.resize(h.size());
    d_emb.resize(emb.size());
    d_b1.resize(b1.size());
    d_b2.resize(b2.size());
    d_w1.resize(w1.size());
    d_w2.resize(w2.size());
  }

  // dW = dYᵀ X of both layers, in full: what GRASS never forms, for the AdamW baseline.
  void weight_gradients() {
    for (int k = 0; k < kHidden; ++k) {
      for (int e = 0; e < kEmbed; ++e) {
        double acc = 0.0;
        for (int t = 0; t < kBatch; ++t) {
          acc += double(d_z1[size_t(t) * kHidden + size_t(k)]) * x[size_t(t) * kEmbed + size_t(e)];
        }
        d_w1[size_t(k) * kEmbed + size_t(e)] = float(acc);
      }
    }
    for (int v = 0; v < kVocab; ++v) {
      for (int k = 0; k < kHidden; ++k) {
        double acc = 0.0;
        for (int t = 0; t < kBatch; ++t) {
          acc += double(d_logits[size_t(t) * kVocab + size_t(v)]) * h[size_t(t) * kHidden + size_t(k)];
        }
        d_w2[size_t(v) * kHidden + size_t(k)] = float(acc);
      }
    }
  }

  // Mean cross-entropy of predicting `next` from `context`; keeps what backward() needs.
  float forward(const std::vector<int>& context, const std::vector<int>& next) {
    for (int t = 0; t < kBatch; ++t) {
      std::memcpy(&x[size_t(t) * kEmbed], &emb[size_t(context[size_t(t)]) * kEmbed],
                  kEmbed * sizeof(float));
    }
    matmul_bt(x.data(), w1.data(), b1.data(), h.data(), kBatch, kEmbed, kHidden);
    for (auto& v : h) v = std::tanh(v);
    matmul_bt(h.data(), w2.data(), b2.data(), logits.data(), kBatch, kHidden, kVocab);
    double loss = 0.0;
    for (int t = 0; t < kBatch; ++t) {
      // d(mean loss)/d logits = (softmax - onehot) / batch
      loss += example::softmax_cross_entropy(&logits[size_t(t) * kVocab],
                                             &d_logits[size_t(t) * kVocab], kVocab,
                                             next[size_t(t)], kBatch);
    }
    return float(loss / kBatch);
  }

  // Gradients of everything except W1 and W2: theirs are dY^T X, which only GRASS consumes,
  // from (X, dY) = (x, d_z1) and (h, d_logits).
  void backward(const std::vector<int>& context) {
    std::vector<float> d_h(h.size());
    matmul(d_logits.data(), w2.data(), d_h.data(), kBatch, kVocab, kHidden);
    for (size_t i = 0; i < h.size(); ++i) d_z1[i] = d_h[i] * (1.0f - h[i] * h[i]);
    std::vector<float> d_x(x.size());
    matmul(d_z1.data(), w1.data(), d_x.data(), kBatch, kHidden, kEmbed);
    std::fill(d_emb.begin(), d_emb.end(), 0.0f);
    std::fill(d_b1.begin(), d_b1.end(), 0.0f);
    std::fill(d_b2.begin(), d_b2.end(), 0.0f);
    for (int t = 0; t < kBatch; ++t) {
      float* e = &d_emb[size_t(context[size_t(t)]) * kEmbed];
      for (int k = 0; k < kEmbed; ++k) e[k] += d_x[size_t(t) * kEmbed + size_t(k)];
      for (int k = 0; k < kHidden; ++k) d_b1[size_t(k)] += d_z1[size_t(t) * kHidden + size_t(k)];
      for (int v = 0; v < kVocab; ++v) d_b2[size_t(v)] += d_logits[size_t(t) * kVocab + size_t(v)];
    }
  }

  std::vector<std::vector<float>*> parameters() { return {&emb, &w1, &b1, &w2, &b2}; }
};

// ---- training --------------------------------------------------------------------------------

// The optimizers of one model on one device, and the device's view of the tensors they touch.
class Trainer {
 public:
  // `grass_weights` false: the AdamW baseline, dense AdamW on W1 and W2 as well.
  Trainer(grass::Context& ctx, const std::shared_ptr<example::CudaDriver>& cuda, Model& model,
          const GrassSettings& settings, bool grass_weights = true)
      : model_(model), grass_(grass_weights) {
    auto adamw = grass::AdamWConfig().weight_decay(0.0f).refresh_mode(settings.refresh);
    auto rows = [&settings](int64_t rank, uint32_t layer) {
      return grass::ProjectionConfig()
          .rank(rank)
          .method(settings.method)
          .scaling(settings.scaling)
          .refresh_every(settings.refresh_every)
          .seed(2024)
          .layer_id(layer);
    };
    if (grass_) {
      w1_ = grass::Optimizer::sparse(ctx, rows(kRank1, 1), adamw, kHidden, kEmbed, kBatch,
                                     grass::Dtype::F32, grass::Dtype::F32);
      w2_ = grass::Optimizer::sparse(ctx, rows(kRank2, 2), adamw, kVocab, kHidden, kBatch,
                                     grass::Dtype::F32, grass::Dtype::F32);
    } else {
      w1_ = grass::Optimizer::dense(ctx, adamw, kHidden * kEmbed, grass::Dtype::F32,
                                    grass::Dtype::F32);
      w2_ = grass::Optimizer::dense(ctx, adamw, kVocab * kHidden, grass::Dtype::F32,
                                    grass::Dtype::F32);
    }
    emb_ = grass::Optimizer::dense(ctx, adamw, kVocab * kEmbed, grass::Dtype::F32,
                                   grass::Dtype::F32);
    b1_ = grass::Optimizer::dense(ctx, adamw, kHidden, grass::Dtype::F32, grass::Dtype::F32);
    b2_ = grass::Optimizer::dense(ctx, adamw, kVocab, grass::Dtype::F32, grass::Dtype::F32);
    for (auto* v : {&model.emb, &model.w1, &model.b1, &model.w2, &model.b2, &model.x, &model.h,
                    &model.d_z1, &model.d_logits, &model.d_emb, &model.d_b1, &model.d_b2,
                    &model.d_w1, &model.d_w2}) {
      mirrors_.emplace_back(std::make_unique<example::Mirror>(cuda, *v));
    }
    weights_to_device();
  }

  // After the host copies of the weights changed (e.g. loaded from a checkpoint).
  void weights_to_device() {
    for (size_t i = 0; i < 5; ++i) mirrors_[i]->to_device();
  }

  float step(const MarkovText& text, uint64_t step) {
    text.batch(step, context_, next_);
    const float loss = model_.forward(context_, next_);
    model_.backward(context_);
    if (!grass_) model_.weight_gradients();
    for (size_t i = 5; i < mirrors_.size(); ++i) mirrors_[i]->to_device();
    if (grass_) {
      w1_.backward(kBatch, view(kX), view(kDz1));
      w2_.backward(kBatch, view(kH), view(kDLogits));
      w1_.step(view(kW1), kLr);
      w2_.step(view(kW2), kLr);
    } else {
      w1_.step(view(kW1), view(kDW1), kLr);
      w2_.step(view(kW2), view(kDW2), kLr);
    }
    emb_.step(view(kEmb), view(kDEmb), kLr);
    b1_.step(view(kB1), view(kDB1), kLr);
    b2_.step(view(kB2), view(kDB2), kLr);
    for (size_t i = 0; i < 5; ++i) mirrors_[i]->to_host();
    return loss;
  }

  struct Row {
    const char* name;
    int64_t m, n;
    const grass::Optimizer* opt;
  };
  std::vector<Row> table() const {
    return {{"embedding", kVocab, kEmbed, &emb_},
            {"W1", kHidden, kEmbed, &w1_},
            {"b1", kHidden, 1, &b1_},
            {"W2", kVocab, kHidden, &w2_},
            {"b2", kVocab, 1, &b2_}};
  }

  std::vector<const grass::Optimizer*> optimizers() const {
    return {&emb_, &w1_, &b1_, &w2_, &b2_};
  }
  std::vector<grass::Optimizer*> optimizers() { return {&emb_, &w1_, &b1_, &w2_, &b2_}; }

 private:
  enum { kEmb, kW1, kB1, kW2, kB2, kX, kH, kDz1, kDLogits, kDEmb, kDB1, kDB2, kDW1, kDW2 };
  float* view(int i) { return mirrors_[size_t(i)]->get(); }

  Model& model_;
  bool grass_;
  grass::Optimizer w1_{nullptr}, w2_{nullptr}, emb_{nullptr}, b1_{nullptr}, b2_{nullptr};
  std::vector<std::unique_ptr<example::Mirror>> mirrors_;
  std::vector<int> context_, next_;
};

// Both columns count the same thing: the bytes of context memory an optimizer owns, as
// grass_optimizer_get_info reports them (states, step counts, and for GRASS the selection, the
// compressed-gradient accumulator and scratch). The AdamW column asks a dense optimizer made for
// the same parameter, so its total equals what the baseline run below reports.
void print_memory(const grass::Context& ctx, const Trainer& trainer) {
  std::printf("\noptimizer memory per parameter (bytes of context memory each optimizer owns, "
              "grass_optimizer_get_info):\n");
  std::printf("  %-10s %-11s %-26s %12s %14s\n", "parameter", "shape", "optimizer", "grass bytes",
              "AdamW bytes");
  int64_t total_grass = 0, total_dense = 0, weight_grads = 0;
  for (const auto& row : trainer.table()) {
    const auto info = row.opt->info();
    char shape[32], kind[64];
    std::snprintf(shape, sizeof shape, "%lld x %lld", static_cast<long long>(row.m),
                  static_cast<long long>(row.n));
    if (info.is_sparse) {
      const auto p = row.opt->projection().info();
      std::snprintf(kind, sizeof kind, "GRASS r=%lld of %lld %s", static_cast<long long>(p.rank),
                    static_cast<long long>(p.d), p.side == GRASS_SIDE_ROWS ? "rows" : "cols");
      weight_grads += row.m * row.n * int64_t(sizeof(float));
    } else {
      std::snprintf(kind, sizeof kind, "dense AdamW");
    }
    const int64_t dense = grass::Optimizer::dense(ctx, grass::AdamWConfig(), row.m * row.n,
                                                  grass::Dtype::F32, grass::Dtype::F32)
                              .info()
                              .memory_bytes;
    std::printf("  %-10s %-11s %-26s %12lld %14lld\n", row.name, shape, kind,
                static_cast<long long>(info.memory_bytes), static_cast<long long>(dense));
    total_grass += info.memory_bytes;
    total_dense += dense;
  }
  std::printf("  %-49s %12lld %14lld\n", "total", static_cast<long long>(total_grass),
              static_cast<long long>(total_dense));
  std::printf("  dense AdamW would also need the m x n gradients of W1 and W2 (%lld bytes); the\n"
              "  GRASS step computes only the r selected rows of them.\n\n",
              static_cast<long long>(weight_grads));
}

// ---- checkpoints -----------------------------------------------------------------------------

void write_blob(std::ofstream& out, const void* data, uint64_t bytes) {
  out.write(reinterpret_cast<const char*>(&bytes), sizeof bytes);
  out.write(static_cast<const char*>(data), std::streamsize(bytes));
}

std::vector<uint8_t> read_blob(std::ifstream& in) {
  uint64_t bytes = 0;
  in.read(reinterpret_cast<char*>(&bytes), sizeof bytes);
  if (!in || bytes > (uint64_t(1) << 32)) throw std::runtime_error("checkpoint file is damaged");
  std::vector<uint8_t> blob(bytes);
  in.read(reinterpret_cast<char*>(blob.data()), std::streamsize(bytes));
  if (!in) throw std::runtime_error("checkpoint file is truncated");
  return blob;
}

// The weights and every optimizer's state (grass_optimizer_export_state) in one file.
void save(const std::string& path, Model& model, const Trainer& trainer) {
  std::ofstream out(path, std::ios::binary);
  for (auto* w : model.parameters()) write_blob(out, w->data(), w->size() * sizeof(float));
  for (const auto* opt : trainer.optimizers()) {
    const auto state = opt->export_state();
    write_blob(out, state.data(), state.size());
  }
  if (!out) throw std::runtime_error("cannot write " + path);
}

void load(const std::string& path, Model& model, Trainer& trainer) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  for (auto* w : model.parameters()) {
    auto blob = read_blob(in);
    if (blob.size() != w->size() * sizeof(float)) throw std::runtime_error("weight size differs");
    std::memcpy(w->data(), blob.data(), blob.size());
  }
  for (auto* opt : trainer.optimizers()) opt->import_state(read_blob(in));
  trainer.weights_to_device();
}

// ---- main ------------------------------------------------------------------------------------

struct Options {
  int steps = 600;
  int resume_steps = 100;
  std::string checkpoint = "grass_train_mlp.ckpt";
  bool force_cpu = false;
  bool baseline = true;
  GrassSettings grass;
};


constexpr const char* kUsage =
    "usage: grass_train_mlp [--steps N] [--resume-steps N] [--checkpoint PATH] [--cpu] "
    "[--no-baseline] [--method top_r|multinomial|multinomial_nr|uniform|uniform_nr] "
    "[--scaling unbiased|none] [--refresh reset|carry] [--refresh-every K]";

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--steps") {
      o.steps = std::atoi(value());
    } else if (a == "--resume-steps") {
      o.resume_steps = std::atoi(value());
    } else if (a == "--checkpoint") {
      o.checkpoint = value();
    } else if (a == "--cpu") {
      o.force_cpu = true;
    } else if (a == "--no-baseline") {
      o.baseline = false;
    } else if (a == "--method") {
      const std::pair<const char*, grass::Method> methods[] = {
          {"top_r", grass::Method::TopR},
          {"multinomial", grass::Method::Multinomial},
          {"multinomial_nr", grass::Method::MultinomialNr},
          {"uniform", grass::Method::Uniform},
          {"uniform_nr", grass::Method::UniformNr}};
      o.grass.method = named("--method", value(), methods);
    } else if (a == "--scaling") {
      const std::pair<const char*, grass::Scaling> scalings[] = {
          {"unbiased", grass::Scaling::Unbiased}, {"none", grass::Scaling::None}};
      o.grass.scaling = named("--scaling", value(), scalings);
    } else if (a == "--refresh") {
      const std::pair<const char*, grass::RefreshMode> modes[] = {
          {"reset", grass::RefreshMode::Reset}, {"carry", grass::RefreshMode::Carry}};
      o.grass.refresh = named("--refresh", value(), modes);
    } else if (a == "--refresh-every") {
      o.grass.refresh_every = std::atoi(value());
    } else if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    } else {
      throw std::runtime_error(std::string("unknown option ") + a + "; " + kUsage);
    }
  }
  if (o.steps < 1 || o.resume_steps < 1) throw std::runtime_error("steps must be positive");
  if (o.grass.refresh_every < 1) throw std::runtime_error("--refresh-every must be positive");
  return o;
}

// A CUDA context (and the driver for device buffers) when grass can make one, else the CPU.
grass::Context open_device(bool force_cpu, std::shared_ptr<example::CudaDriver>& cuda) {
  const auto probe = grass::cuda_available();
  if (force_cpu) {
    std::printf("device: CPU (--cpu)\n");
    return grass::Context::cpu();
  }
  if (!probe.available) {
    // The usual case on a machine without a GPU, not a fault: the CPU backend is the reference
    // and runs everything. The reason matters where a GPU was expected, so it follows.
    std::printf("device: CPU (no usable CUDA GPU here; the CPU backend runs everything)\n"
                "        why not CUDA: %s\n",
                probe.reason.c_str());
    return grass::Context::cpu();
  }
  try {
    auto ctx = grass::Context::cuda(0);
    cuda = std::make_shared<example::CudaDriver>(0);
    std::printf("device: CUDA device 0 (%s)\n", probe.reason.c_str());
    return ctx;
  } catch (const std::exception& e) {
    std::printf("device: CPU (a CUDA GPU was found, but grass could not use it: %s)\n",
                e.what());
    return grass::Context::cpu();
  }
}

int run(const Options& opt) {
  std::printf("grass %s: GRASS on a small next-token model (vocab %d, embed %d, hidden %d, batch "
              "%d)\n",
              grass::version(), kVocab, kEmbed, kHidden, kBatch);
  if (!grass::abi_compatible()) {
    std::printf("libgrass implements ABI %u but grass.h is ABI %d\n", grass::abi_version(),
                GRASS_ABI_VERSION);
    return 1;
  }
  std::shared_ptr<example::CudaDriver> cuda;
  grass::Context ctx = open_device(opt.force_cpu, cuda);
  const MarkovText text(7);
  std::printf("best achievable loss (entropy of the chain): %.3f nats; uniform guess: %.3f\n\n",
              text.entropy(), std::log(double(kVocab)));

  Model model(1);
  Trainer trainer(ctx, cuda, model, opt.grass);
  const int log_every = std::max(1, opt.steps / 12);
  double first = 0.0, recent = 0.0;
  int recent_n = 0;
  for (int s = 0; s < opt.steps; ++s) {
    const float loss = trainer.step(text, uint64_t(s));
    if (s == 0) first = loss;
    recent += loss;
    ++recent_n;
    if ((s + 1) % log_every == 0 || s + 1 == opt.steps) {
      std::printf("step %5d  loss %.4f\n", s + 1, recent / recent_n);
      recent = 0.0;
      recent_n = 0;
    }
  }
  // A step with a NaN or infinity in its gradient is skipped rather than applied; the outcome
  // of the last step says whether (and why), at the cost of a sync on CUDA: not per step.
  for (const auto& row : trainer.table()) {
    const auto outcome = row.opt->last_step_outcome();
    if (outcome != grass::StepOutcome::Applied) {
      std::printf("the last step of %s was %s\n", row.name, grass::step_outcome_string(outcome));
    }
  }
  print_memory(ctx, trainer);

  // Checkpoint, train on, then resume from the checkpoint in fresh optimizers.
  save(opt.checkpoint, model, trainer);
  std::printf("saved checkpoint after step %d to %s\n", opt.steps, opt.checkpoint.c_str());
  const auto train_on = [&](Trainer& t) {
    double sum = 0.0;
    for (int s = opt.steps; s < opt.steps + opt.resume_steps; ++s) {
      sum += t.step(text, uint64_t(s));
    }
    return sum / opt.resume_steps;
  };
  const double loss_a = train_on(trainer);

  Model resumed(99);  // other initial weights: everything must come from the checkpoint
  Trainer restored(ctx, cuda, resumed, opt.grass);
  load(opt.checkpoint, resumed, restored);
  const double loss_b = train_on(restored);
  bool same = loss_a == loss_b;
  for (size_t i = 0; i < 5; ++i) {
    same = same && *model.parameters()[i] == *resumed.parameters()[i];
  }
  std::printf("trained %d more steps twice, straight on and resumed from the checkpoint: mean "
              "loss %.6f vs %.6f, weights %s\n",
              opt.resume_steps, loss_a, loss_b, same ? "bit-identical" : "DIFFERENT");
  std::remove(opt.checkpoint.c_str());

  if (opt.baseline) {
    Model base(1);  // the GRASS run's initial weights, the same batches
    Trainer dense(ctx, cuda, base, opt.grass, false);
    double window = 0.0;
    for (int s = 0; s < opt.steps + opt.resume_steps; ++s) {
      const float loss = dense.step(text, uint64_t(s));
      if (s >= opt.steps) window += loss;
    }
    window /= opt.resume_steps;
    const auto memory = [](const Trainer& t) {
      long long bytes = 0;
      for (const auto* o : t.optimizers()) bytes += static_cast<long long>(o->info().memory_bytes);
      return bytes;
    };
    std::printf("\nbaseline: dense AdamW on every parameter, same start and batches\n"
                "  mean loss over steps %d-%d: GRASS %.4f, AdamW %.4f (GRASS %+.1f%%)\n"
                "  optimizer memory (as in the table above): GRASS %lld bytes, AdamW %lld bytes "
                "(plus the %zu bytes of full weight gradients AdamW needs)\n",
                opt.steps + 1, opt.steps + opt.resume_steps, loss_a, window,
                100.0 * (loss_a - window) / window, memory(trainer), memory(dense),
                (base.d_w1.size() + base.d_w2.size()) * sizeof(float));
  }

  const bool learned = loss_a < 0.6 * first;
  if (!learned) std::printf("the loss did not fall enough: %.4f -> %.4f\n", first, loss_a);
  return same && learned ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Line-buffered even into a pipe or a file (scripts/demo.sh | tee), so progress shows as it
  // happens and interleaves with stderr in order.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    return run(parse(argc, argv));
  } catch (const grass::Error& e) {
    std::fprintf(stderr, "grass error %d (%s): %s\n", static_cast<int>(e.status()),
                 e.status_string(), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
