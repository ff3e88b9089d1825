// grass data parallel: one model trained by several processes over MPI (NCCL when built with it).
//
// The task is the one of train_mlp.cpp, smaller: next-token prediction on a synthetic Markov
// chain with   embedding (V x E) -> W1 (H x E) + tanh -> W2 (V x H) -> softmax.
// Every rank holds the whole model and sees its shard (a contiguous slice) of each global batch;
// gradients are normalized by the global batch, so their sum over ranks is the gradient of the
// global batch. W1 and W2 are GRASS layers built from grass's projection and stateless ops (the
// Optimizer handle accumulates its compressed gradient inside, out of reach of a collective):
//   * at a refresh the ranks combine their row scores (--dp-scores):
//       exact   all-gather the layer's X and dY shards and score the global batch: every rank
//               computes the scores a single process would (b·(m+n) floats handed per rank);
//       sum_sq  sqrt of the sum over ranks of each rank's squared row norms: d floats, an
//               estimate that ignores the cross-rank terms of the norm of a sum;
//     every rank then selects from the same scores with the same seed, layer id and refresh
//     index, so the selection is the same everywhere;
//   * every step the compressed gradient (r x k) is all-reduced instead of the m x n gradient,
//     and each rank takes the same compressed AdamW step on its copy of W;
//   * the embedding and biases (dense AdamW) have their gradients all-reduced in one buffer.
// Bytes handed to the collectives are counted per layer and printed against a dense all-reduce
// of each weight's m x n gradient.
//
// Setups that would make ranks diverge or mismatch their collectives (other shapes, rank,
// seed, method, refresh schedule, batch) are caught by an all-reduced fingerprint (the min and
// max of each setting across ranks) when the trainer is made and after each refresh (which also
// compares the selected rows); every rank then stops with the same message instead of hanging.
//
//   mpirun -np 2 grass_train_mlp_mpi [--steps N] [--global-batch B] [--refresh-every K]
//       [--method top_r|multinomial|multinomial_nr|uniform|uniform_nr] [--refresh reset|carry]
//       [--dp-scores exact|sum_sq] [--backend auto|mpi|nccl] [--check-single] [--compare-scores]
//       [--fault seed|rank|refresh-every|selection]
//
// Every run checks that all ranks end with bit-identical weights and that the counted bytes are
// what the shapes say. --check-single also trains the same model on each global batch in one
// process (on every rank, in parallel) and checks the data-parallel run against it. --fault
// makes rank 1 misconfigure itself (a test that the fingerprint catches it). --compare-scores
// (with sum_sq) also computes at each refresh the selection exact scores would have made and
// reports the share of rows the two have in common.
//
// Backends: "mpi" runs on CPU contexts with host buffers and MPI collectives. "nccl" (built only
// when CMake found NCCL) runs each rank on CUDA device <local rank>, with grass ops and NCCL
// collectives on device pointers on one stream per rank; MPI then carries only the
// fingerprints, the loss and NCCL's bootstrap.

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "device_memory.hpp"
#include "grass.hpp"
#include "mlp_task.hpp"

#ifdef GRASS_EXAMPLE_NCCL
#include <dlfcn.h>
#include <nccl.h>
#endif

namespace {

using example::init;
using example::named;
using example::matmul;
using example::matmul_bt;
using example::Rng;

constexpr int kVocab = 256, kEmbed = 64, kHidden = 256;
constexpr int64_t kRank1 = 16, kRank2 = 32;
constexpr float kLr = 0.01f;
// The projected layers' step is scaled by the library's alpha (default 0.177), so they take
// the learning rate kLr / alpha: the same step size as AdamW's at kLr.

// ---- data ------------------------------------------------------------------------------------

// Each token has four favourite successors; the remaining 5% is spread evenly.
class MarkovText {
 public:
  explicit MarkovText(uint64_t seed) : chain_(seed, kVocab, {0.5, 0.25, 0.12, 0.08}, 0.05) {}

  // Global batch `step` (a function of `step` alone), and of it the slice [first, first + count).
  void batch(uint64_t step, int global, int first, int count, std::vector<int>& context,
             std::vector<int>& next) const {
    Rng rng{0xda7a0000u + step * 7919u};
    context.clear();
    next.clear();
    for (int t = 0; t < global; ++t) {
      int a = 0, b = 0;
      chain_.draw(rng, a, b);
      if (t >= first && t < first + count) {
        context.push_back(a);
        next.push_back(b);
      }
    }
  }

 private:
  example::MarkovChain chain_;
};

// ---- memory of the context --------------------------------------------------------------------

// A tensor with a host copy and, for a CUDA context, a device copy synchronized explicitly; for
// a CPU context get() is the host copy itself. The copies run on the legacy default stream,
// which waits for the work enqueued before on the ops' stream (a blocking stream): a copy to the
// host sees what the ops and collectives wrote.
template <class T>
class Buffer {
 public:
  Buffer(std::shared_ptr<example::CudaDriver> cuda, size_t n, T fill = T())
      : cuda_(std::move(cuda)), host(n, fill) {
    if (cuda_) {
      device_ = cuda_->alloc(std::max<size_t>(bytes(), 1));
      to_device();
    }
  }
  ~Buffer() {
    if (cuda_) cuda_->free(device_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* get() { return cuda_ ? static_cast<T*>(device_) : host.data(); }
  size_t size() const { return host.size(); }
  size_t bytes() const { return host.size() * sizeof(T); }
  void to_device() {
    if (cuda_) cuda_->upload(device_, host.data(), bytes());
  }
  void to_host() {
    if (cuda_) cuda_->download(host.data(), device_, bytes());
  }
  // Copies `count` elements of context memory at `src` into this buffer (both copies).
  void copy_from(const T* src, size_t count) {
    if (cuda_) {
      cuda_->download(host.data(), src, count * sizeof(T));
      to_device();
    } else {
      std::memmove(host.data(), src, count * sizeof(T));
    }
  }

 private:
  std::shared_ptr<example::CudaDriver> cuda_;
  void* device_ = nullptr;

 public:
  std::vector<T> host;
};

using Floats = Buffer<float>;

// FNV-1a over bytes.
uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

// ---- collectives ------------------------------------------------------------------------------

// What every rank hands to collectives: context memory (host pointers with MPI, device pointers
// with NCCL), summed or gathered in rank order. One rank (the single-process reference) makes
// both the identity. The control plane (fingerprints, the loss) always goes through MPI on host
// memory.
class Comm {
 public:
  Comm(MPI_Comm world, int size, int rank) : world_(world), size_(size), rank_(rank) {}
  virtual ~Comm() = default;
  int size() const { return size_; }
  int rank() const { return rank_; }

  // Sums `count` floats in place over the ranks.
  virtual void allreduce_sum(float* buf, size_t count, grass::Stream stream) = 0;
  // Each rank's `count` floats, concatenated in rank order into `recv` (size() * count).
  virtual void allgather(const float* send, size_t count, float* recv, grass::Stream stream) = 0;
  virtual const char* name() const = 0;

  // Host control plane: the minimum and maximum of each value over the ranks.
  void min_max(const std::vector<uint64_t>& v, std::vector<uint64_t>& lo,
               std::vector<uint64_t>& hi) const {
    std::vector<uint64_t> both(2 * v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      both[i] = v[i];
      both[v.size() + i] = ~v[i];  // min of ~v is ~max of v
    }
    if (size_ > 1) {
      MPI_Allreduce(MPI_IN_PLACE, both.data(), int(both.size()), MPI_UINT64_T, MPI_MIN, world_);
    }
    lo.assign(both.begin(), both.begin() + std::ptrdiff_t(v.size()));
    hi.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) hi[i] = ~both[v.size() + i];
  }
  double sum(double x) const {
    if (size_ > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, world_);
    return x;
  }

 protected:
  MPI_Comm world_;
  int size_, rank_;
};

// A single process: nothing to combine.
class LocalComm final : public Comm {
 public:
  LocalComm() : Comm(MPI_COMM_SELF, 1, 0) {}
  void allreduce_sum(float*, size_t, grass::Stream) override {}
  void allgather(const float*, size_t, float*, grass::Stream) override {
    throw std::logic_error("a single process gathers nothing");
  }
  const char* name() const override { return "single process"; }
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm world, int size, int rank) : Comm(world, size, rank) {}
  void allreduce_sum(float* buf, size_t count, grass::Stream) override {
    check(MPI_Allreduce(MPI_IN_PLACE, buf, int(count), MPI_FLOAT, MPI_SUM, world_),
          "MPI_Allreduce");
  }
  void allgather(const float* send, size_t count, float* recv, grass::Stream) override {
    check(MPI_Allgather(send, int(count), MPI_FLOAT, recv, int(count), MPI_FLOAT, world_),
          "MPI_Allgather");
  }
  const char* name() const override { return "MPI (host buffers)"; }

 private:
  static void check(int rc, const char* what) {
    if (rc != MPI_SUCCESS) throw std::runtime_error(std::string(what) + " failed");
  }
};

#ifdef GRASS_EXAMPLE_NCCL
// NCCL on device pointers, enqueued on the caller's stream (the one the grass ops use).
class NcclComm final : public Comm {
 public:
  NcclComm(MPI_Comm world, int size, int rank) : Comm(world, size, rank) {
    ncclUniqueId id;
    if (rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, world);
    check(ncclCommInitRank(&comm_, size, id, rank), "ncclCommInitRank");
  }
  ~NcclComm() override { ncclCommDestroy(comm_); }
  void allreduce_sum(float* buf, size_t count, grass::Stream stream) override {
    check(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, comm_,
                        static_cast<cudaStream_t>(stream)),
          "ncclAllReduce");
  }
  void allgather(const float* send, size_t count, float* recv, grass::Stream stream) override {
    check(ncclAllGather(send, recv, count, ncclFloat, comm_, static_cast<cudaStream_t>(stream)),
          "ncclAllGather");
  }
  const char* name() const override { return "NCCL (device buffers)"; }

 private:
  static void check(ncclResult_t rc, const char* what) {
    if (rc != ncclSuccess) {
      throw std::runtime_error(std::string(what) + " failed: " + ncclGetErrorString(rc));
    }
  }
  ncclComm_t comm_ = nullptr;
};

// A stream of the driver API (a CUstream is a cudaStream_t), loaded like device_memory.hpp's.
class DriverStream {
 public:
  DriverStream() {
    lib_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) throw std::runtime_error("cannot load libcuda.so.1");
    create_ = reinterpret_cast<int (*)(void**, unsigned)>(dlsym(lib_, "cuStreamCreate"));
    sync_ = reinterpret_cast<int (*)(void*)>(dlsym(lib_, "cuStreamSynchronize"));
    destroy_ = reinterpret_cast<int (*)(void*)>(dlsym(lib_, "cuStreamDestroy_v2"));
    // flags 0: a blocking stream, ordered with the legacy stream the Buffer copies use
    if (!create_ || !sync_ || !destroy_ || create_(&stream_, 0) != 0) {
      dlclose(lib_);
      throw std::runtime_error("cuStreamCreate failed");
    }
  }
  ~DriverStream() {
    destroy_(stream_);
    dlclose(lib_);
  }
  DriverStream(const DriverStream&) = delete;
  DriverStream& operator=(const DriverStream&) = delete;
  grass::Stream get() const { return stream_; }
  void sync() const {
    if (sync_(stream_) != 0) throw std::runtime_error("cuStreamSynchronize failed");
  }

 private:
  void* lib_ = nullptr;
  void* stream_ = nullptr;
  int (*create_)(void**, unsigned) = nullptr;
  int (*sync_)(void*) = nullptr;
  int (*destroy_)(void*) = nullptr;
};
#endif

// Bytes handed to the collectives, per layer and purpose.
struct Wire {
  struct Count {
    int64_t grad = 0, scores = 0;
  };
  std::map<std::string, Count> by_layer;
  int64_t refreshes = 0;
};

// ---- settings and fingerprints ---------------------------------------------------------------

enum class DpScores { Exact, SumSq };

struct Settings {
  int steps = 40;
  int global_batch = 64;
  int64_t refresh_every = 10;
  grass::Method method = grass::ProjectionConfig().method();  // the library's default
  grass::RefreshMode refresh = grass::AdamWConfig().refresh_mode();
  DpScores dp_scores = DpScores::Exact;
  uint64_t seed = 2024;
  std::string backend = "auto";
  bool check_single = false;
  bool compare_scores = false;
  std::string fault;  // "", seed, rank, refresh-every, selection
};

// The settings that every rank must share, as the fingerprint compares them.
constexpr const char* kFieldNames[] = {
    "number of ranks",     "global batch", "local batch",   "m",
    "n",                   "side",         "rank r",        "method",
    "power",               "scaling",      "refresh_every", "seed",
    "layer_id",            "refresh mode", "dp_scores",     "refreshes done",
    "steps since refresh", "training step", "selected rows (hash)"};
constexpr size_t kFields = sizeof kFieldNames / sizeof kFieldNames[0];

// ---- model -----------------------------------------------------------------------------------

// The model of one rank: parameters, and the activations and gradients of its batch shard.
struct Model {
  static constexpr size_t kEmbN = size_t(kVocab) * kEmbed, kB1N = kHidden, kB2N = kVocab;
  int b;  // tokens of this rank's shard
  Floats emb, w1, b1, w2, b2;
  Floats x, h, d_z1, d_logits;  // X and dY of W1 (x, d_z1) and of W2 (h, d_logits)
  Floats dense_grad;            // gradients of emb | b1 | b2, one buffer for one all-reduce
  std::vector<float> logits;

  Model(const std::shared_ptr<example::CudaDriver>& cuda, int tokens)
      : b(tokens),
        emb(cuda, kEmbN), w1(cuda, size_t(kHidden) * kEmbed), b1(cuda, kB1N),
        w2(cuda, size_t(kVocab) * kHidden), b2(cuda, kB2N),
        x(cuda, size_t(tokens) * kEmbed), h(cuda, size_t(tokens) * kHidden),
        d_z1(cuda, size_t(tokens) * kHidden), d_logits(cuda, size_t(tokens) * kVocab),
        dense_grad(cuda, kEmbN + kB1N + kB2N), logits(size_t(tokens) * kVocab) {
    Rng rng{1};  // the same initial weights on every rank
    emb.host = init(rng, emb.size(), 1.0f);
    w1.host = init(rng, w1.size(), std::sqrt(3.0f / kEmbed));
    w2.host = init(rng, w2.size(), std::sqrt(3.0f / kHidden));
    for (Floats* p : parameters()) p->to_device();
  }

  std::vector<Floats*> parameters() { return {&emb, &w1, &b1, &w2, &b2}; }

  // Forward and backward of this shard; gradients are divided by the global batch `norm`, so
  // that their sum over the ranks is the global batch's. Returns the shard's summed loss.
  double train_pass(const std::vector<int>& context, const std::vector<int>& next, int norm) {
    for (int t = 0; t < b; ++t) {
      std::memcpy(&x.host[size_t(t) * kEmbed], &emb.host[size_t(context[size_t(t)]) * kEmbed],
                  kEmbed * sizeof(float));
    }
    matmul_bt(x.host.data(), w1.host.data(), b1.host.data(), h.host.data(), b, kEmbed, kHidden);
    for (auto& v : h.host) v = std::tanh(v);
    matmul_bt(h.host.data(), w2.host.data(), b2.host.data(), logits.data(), b, kHidden, kVocab);
    double loss = 0.0;
    for (int t = 0; t < b; ++t) {
      loss += example::softmax_cross_entropy(&logits[size_t(t) * kVocab],
                                             &d_logits.host[size_t(t) * kVocab], kVocab,
                                             next[size_t(t)], norm);
    }
    std::vector<float> d_h(h.size()), d_x(x.size());
    matmul(d_logits.host.data(), w2.host.data(), d_h.data(), b, kVocab, kHidden);
    for (size_t i = 0; i < d_h.size(); ++i) d_z1.host[i] = d_h[i] * (1.0f - h.host[i] * h.host[i]);
    matmul(d_z1.host.data(), w1.host.data(), d_x.data(), b, kHidden, kEmbed);
    std::fill(dense_grad.host.begin(), dense_grad.host.end(), 0.0f);
    float* d_emb = dense_grad.host.data();
    float* d_b1 = d_emb + kEmbN;
    float* d_b2 = d_b1 + kB1N;
    for (int t = 0; t < b; ++t) {
      float* e = d_emb + size_t(context[size_t(t)]) * kEmbed;
      for (int k = 0; k < kEmbed; ++k) e[k] += d_x[size_t(t) * kEmbed + size_t(k)];
      for (int k = 0; k < kHidden; ++k) d_b1[k] += d_z1.host[size_t(t) * kHidden + size_t(k)];
      for (int v = 0; v < kVocab; ++v) d_b2[v] += d_logits.host[size_t(t) * kVocab + size_t(v)];
    }
    for (Floats* t : {&x, &h, &d_z1, &d_logits, &dense_grad}) t->to_device();
    return loss;
  }

  uint64_t weights_hash() {
    uint64_t hash = fnv1a(nullptr, 0);
    for (Floats* p : parameters()) hash = fnv1a(p->host.data(), p->bytes(), hash);
    return hash;
  }
};

// ---- the data-parallel trainer ---------------------------------------------------------------

// One GRASS layer: its projection, its compressed AdamW state and the buffers its collectives
// use, all in context memory.
struct GrassLayer {
  std::string name;
  int64_t m, n;
  grass::ResolvedSide side;
  grass::ProjectionConfig config;
  grass::Projection projection{nullptr};
  Floats *w, *x, *dy;
  Floats g, m_state, v_state, scores, gathered_x, gathered_dy;
  Buffer<int32_t> row_steps, old_indices;
  Buffer<uint8_t> workspace;
  // --compare-scores: the selection exact scores would have made, and how much of it sum_sq's
  // selection shares (summed over refreshes).
  Floats exact_scores, exact_scales;
  Buffer<int32_t> exact_indices;
  Buffer<uint8_t> select_workspace;
  double overlap = 0.0;
  int compared = 0;

  GrassLayer(const grass::Context& ctx, const std::shared_ptr<example::CudaDriver>& cuda,
             const grass::AdamWConfig& adamw, std::string layer_name, int64_t rows, int64_t cols,
             grass::ProjectionConfig cfg, Floats* weight, Floats* input, Floats* output_grad,
             int world, int local_batch)
      : name(std::move(layer_name)), m(rows), n(cols),
        side(grass::resolve_side(rows, cols, cfg.side())), config(cfg),
        projection(grass::Projection::create(ctx, cfg, rows, cols,
                                             int64_t(world) * local_batch, grass::Dtype::F32)),
        w(weight), x(input), dy(output_grad),
        g(cuda, size_t(cfg.rank() * side.k)),
        m_state(cuda, size_t(cfg.rank() * side.k)), v_state(cuda, size_t(cfg.rank() * side.k)),
        scores(cuda, size_t(side.d)),
        gathered_x(cuda, world > 1 ? size_t(world) * size_t(local_batch) * size_t(cols) : 0),
        gathered_dy(cuda, world > 1 ? size_t(world) * size_t(local_batch) * size_t(rows) : 0),
        row_steps(cuda, size_t(cfg.rank())), old_indices(cuda, size_t(cfg.rank())),
        workspace(cuda, std::max(ctx.sparse_adamw_workspace_size(rows, cols, side.side,
                                                                  cfg.rank()),
                                 ctx.state_refresh_workspace_size(adamw.refresh_mode(),
                                                                  adamw.state_dtype(),
                                                                  cfg.rank(), side.k))),
        exact_scores(cuda, size_t(side.d)), exact_scales(cuda, size_t(cfg.rank())),
        exact_indices(cuda, size_t(cfg.rank())),
        select_workspace(cuda, ctx.select_workspace_size(side.d, cfg.rank())) {}

  int64_t r() const { return config.rank(); }
};

class Trainer {
 public:
  Trainer(const grass::Context& ctx, std::shared_ptr<example::CudaDriver> cuda, Comm& comm,
          const Settings& s, grass::Stream stream)
      : ctx_(ctx), cuda_(std::move(cuda)), comm_(comm), s_(s), stream_(stream),
        local_batch_(s.global_batch / comm.size()), model_(cuda_, local_batch_),
        // f32 moments (the library's default is bf16): the check against one process holds
        // the weights to 1e-4, and bf16 moments round the same sums, added by the all-reduce
        // in another order, to different neighbours
        adamw_(grass::AdamWConfig()
                   .weight_decay(0.0f)
                   .refresh_mode(s.refresh)
                   .state_dtype(grass::Dtype::F32)) {
    const bool faulty = comm.rank() == 1;
    auto rows = [&](int64_t rank, uint32_t layer) {
      auto cfg = grass::ProjectionConfig()
                     .rank(rank)
                     .method(s.method)
                     .refresh_every(s.refresh_every)
                     .seed(s.seed)
                     .layer_id(layer);
      if (faulty && s.fault == "seed") cfg.seed(s.seed + 1);
      if (faulty && s.fault == "refresh-every") cfg.refresh_every(s.refresh_every + 1);
      return cfg;
    };
    const int64_t rank2 = faulty && s.fault == "rank" ? kRank2 + 1 : kRank2;
    layers_.emplace_back(std::make_unique<GrassLayer>(
        ctx, cuda_, adamw_, "W1", kHidden, kEmbed, rows(kRank1, 1), &model_.w1, &model_.x,
        &model_.d_z1, comm.size(), local_batch_));
    layers_.emplace_back(std::make_unique<GrassLayer>(
        ctx, cuda_, adamw_, "W2", kVocab, kHidden, rows(rank2, 2), &model_.w2, &model_.h,
        &model_.d_logits, comm.size(), local_batch_));
    for (size_t numel : {Model::kEmbN, Model::kB1N, Model::kB2N}) {
      dense_.push_back(grass::Optimizer::dense(ctx, adamw_, int64_t(numel), grass::Dtype::F32,
                                               grass::Dtype::F32));
    }
    // Before any collective whose size depends on the setup.
    for (auto& layer : layers_) agree(*layer, 0, "when the trainer was made");
  }

  Model& model() { return model_; }
  // The selected rows of layer `l` (host copy).
  std::vector<int32_t> selection(size_t l) {
    return indices(layers_[l]->projection.selection().indices, size_t(layers_[l]->r()));
  }
  const Wire& wire() const { return wire_; }
  const std::vector<std::unique_ptr<GrassLayer>>& layers() const { return layers_; }

  // One training step on global batch `step`; returns the global batch's mean loss.
  double step(const MarkovText& text, uint64_t step) {
    text.batch(step, s_.global_batch, comm_.rank() * local_batch_, local_batch_, context_, next_);
    const double loss = model_.train_pass(context_, next_, s_.global_batch);
    for (auto& layer : layers_) {
      if (layer->projection.info().refresh_due) refresh(*layer, step);
      layer->projection.compress(local_batch_, layer->x->get(), layer->dy->get(),
                                 layer->g.get(), false, stream_);
      reduce(layer->name, layer->g.get(), layer->g.size());
    }
    reduce("dense", model_.dense_grad.get(), model_.dense_grad.size());
    for (auto& layer : layers_) {
      const auto sel = layer->projection.selection();
      ctx_.sparse_adamw_step(adamw_, layer->m, layer->n, layer->side.side, layer->r(),
                             grass::Dtype::F32, layer->w->get(), sel.indices, sel.scales,
                             layer->g.get(), layer->m_state.get(), layer->v_state.get(),
                             layer->row_steps.get(), kLr / adamw_.alpha(), nullptr, nullptr,
                             layer->workspace.get(), layer->workspace.size(), stream_);
      layer->projection.advance();
    }
    float* grads = model_.dense_grad.get();
    Floats* dense_params[] = {&model_.emb, &model_.b1, &model_.b2};
    for (size_t i = 0; i < dense_.size(); ++i) {
      dense_[i].step(dense_params[i]->get(), grads, kLr, stream_);
      grads += dense_params[i]->size();
    }
    for (Floats* p : model_.parameters()) p->to_host();
    return comm_.sum(loss) / s_.global_batch;
  }

 private:
  void reduce(const std::string& layer, float* buf, size_t count) {
    if (comm_.size() == 1) return;
    comm_.allreduce_sum(buf, count, stream_);
    auto& c = wire_.by_layer[layer];
    c.grad += int64_t(count * sizeof(float));
  }

  // New rows for `layer` from scores combined over the ranks, then its state remapped.
  void refresh(GrassLayer& layer, uint64_t step) {
    const auto before = layer.projection.info();
    if (before.has_selection) layer.old_indices.copy_from(layer.projection.selection().indices,
                                                          size_t(layer.r()));
    auto& c = wire_.by_layer[layer.name];
    if (comm_.size() == 1) {
      layer.projection.scores(local_batch_, layer.x->get(), layer.dy->get(), layer.scores.get(),
                              stream_);
    } else if (s_.dp_scores == DpScores::Exact) {
      // The global batch's X and dY in rank order (the single process's batch), then its scores.
      const size_t xn = size_t(local_batch_) * size_t(layer.n);
      const size_t dyn = size_t(local_batch_) * size_t(layer.m);
      comm_.allgather(layer.x->get(), xn, layer.gathered_x.get(), stream_);
      comm_.allgather(layer.dy->get(), dyn, layer.gathered_dy.get(), stream_);
      c.scores += int64_t((xn + dyn) * sizeof(float));
      layer.projection.scores(s_.global_batch, layer.gathered_x.get(), layer.gathered_dy.get(),
                              layer.scores.get(), stream_);
    } else {
      // sqrt(sum over ranks of s^2): squares and roots on the host copy (d floats per refresh).
      layer.projection.scores(local_batch_, layer.x->get(), layer.dy->get(), layer.scores.get(),
                              stream_);
      layer.scores.to_host();
      for (auto& v : layer.scores.host) v *= v;
      layer.scores.to_device();
      comm_.allreduce_sum(layer.scores.get(), layer.scores.size(), stream_);
      layer.scores.to_host();
      for (auto& v : layer.scores.host) v = std::sqrt(v);
      layer.scores.to_device();
      c.scores += int64_t(layer.scores.bytes());
      if (s_.compare_scores) exact_selection(layer, before.refresh_count);
    }
    if (s_.fault == "selection" && comm_.rank() == 1 && before.refresh_count == 1) {
      // A rank whose scores went astray: the check after the refresh must catch it.
      layer.scores.to_host();
      std::reverse(layer.scores.host.begin(), layer.scores.host.end());
      layer.scores.to_device();
    }
    layer.projection.refresh_from_scores(layer.scores.get(), stream_);
    if (s_.compare_scores && s_.dp_scores == DpScores::SumSq && comm_.size() > 1) {
      const auto a = indices(layer.projection.selection().indices, size_t(layer.r()));
      const auto b = indices(layer.exact_indices.get(), size_t(layer.r()));
      // both sorted ascending: count the common entries (repeats pair up)
      size_t i = 0, j = 0, common = 0;
      while (i < a.size() && j < b.size()) {
        if (a[i] == b[j]) {
          ++common, ++i, ++j;
        } else if (a[i] < b[j]) {
          ++i;
        } else {
          ++j;
        }
      }
      layer.overlap += double(common) / double(layer.r());
      ++layer.compared;
    }
    ctx_.state_refresh(adamw_.refresh_mode(), adamw_.state_dtype(), layer.r(), layer.side.k,
                       before.has_selection ? layer.old_indices.get() : nullptr,
                       layer.projection.selection().indices, layer.m_state.get(),
                       layer.v_state.get(), layer.row_steps.get(), layer.workspace.get(),
                       layer.workspace.size(), stream_);
    if (&layer == layers_.back().get()) ++wire_.refreshes;
    agree(layer, step, "after a refresh");
  }

  // A host copy of `count` indices in context memory.
  std::vector<int32_t> indices(const int32_t* p, size_t count) {
    std::vector<int32_t> out(count);
    if (cuda_) {
      cuda_->download(out.data(), p, count * sizeof(int32_t));
    } else {
      std::memcpy(out.data(), p, count * sizeof(int32_t));
    }
    return out;
  }

  // What exact scores would have selected at refresh `index` (a measurement: its bytes are not
  // counted as the mode's).
  void exact_selection(GrassLayer& layer, uint32_t index) {
    const size_t xn = size_t(local_batch_) * size_t(layer.n);
    const size_t dyn = size_t(local_batch_) * size_t(layer.m);
    comm_.allgather(layer.x->get(), xn, layer.gathered_x.get(), stream_);
    comm_.allgather(layer.dy->get(), dyn, layer.gathered_dy.get(), stream_);
    layer.projection.scores(s_.global_batch, layer.gathered_x.get(), layer.gathered_dy.get(),
                            layer.exact_scores.get(), stream_);
    ctx_.select(layer.config, layer.side.d, index, layer.exact_scores.get(),
                layer.exact_indices.get(), layer.exact_scales.get(),
                layer.select_workspace.get(), layer.select_workspace.size(), stream_);
  }

  // Stops every rank with the same message when the ranks' settings for `layer` differ.
  void agree(GrassLayer& layer, uint64_t step, const char* when) {
    const auto p = layer.projection.info();
    const auto& c = layer.config.raw();
    uint64_t selection = 0;
    if (p.has_selection) {
      const auto sel = indices(layer.projection.selection().indices, size_t(layer.r()));
      selection = fnv1a(sel.data(), sel.size() * sizeof(int32_t));
    }
    const std::vector<uint64_t> v = {
        uint64_t(comm_.size()), uint64_t(s_.global_batch), uint64_t(local_batch_),
        uint64_t(layer.m), uint64_t(layer.n), uint64_t(c.side), uint64_t(c.rank),
        uint64_t(c.method), uint64_t(c.power), uint64_t(c.scaling), uint64_t(c.refresh_every),
        c.seed, c.layer_id, uint64_t(adamw_.raw().refresh_mode), uint64_t(s_.dp_scores),
        p.refresh_count, uint64_t(p.steps_since_refresh), step, selection};
    static_assert(kFields == 19, "one name per fingerprint field");
    std::vector<uint64_t> lo, hi;
    comm_.min_max(v, lo, hi);
    wire_.by_layer[layer.name + " check"].grad += int64_t(2 * v.size() * sizeof(uint64_t));
    std::string problem;
    for (size_t i = 0; i < kFields; ++i) {
      if (lo[i] == hi[i]) continue;
      problem += std::string(problem.empty() ? "" : "; ") + kFieldNames[i];
      if (i + 1 < kFields) {  // the hash has no meaningful range
        problem += " (" + std::to_string(lo[i]) + " to " + std::to_string(hi[i]) + ")";
      }
    }
    if (!problem.empty()) {
      throw std::runtime_error("ranks disagree on layer " + layer.name + " " + when +
                               " (at step " + std::to_string(step) + "): " + problem);
    }
  }

  const grass::Context& ctx_;
  std::shared_ptr<example::CudaDriver> cuda_;
  Comm& comm_;
  const Settings& s_;
  grass::Stream stream_;
  int local_batch_;
  Model model_;
  grass::AdamWConfig adamw_;
  std::vector<std::unique_ptr<GrassLayer>> layers_;
  std::vector<grass::Optimizer> dense_;
  std::vector<int> context_, next_;
  Wire wire_;
};

// ---- reports ---------------------------------------------------------------------------------

// Bytes each rank handed to the collectives per step, layer by layer, against a dense
// all-reduce of each weight's gradient. Checks that the counts are what the shapes say.
bool report_wire(const Trainer& t, const Settings& s, bool print) {
  const Wire& w = t.wire();
  const double steps = s.steps;
  bool ok = true;
  if (print) {
    std::printf("\nbytes handed to the collectives per rank per step (%d steps, %lld refreshes, "
                "dp_scores %s):\n",
                s.steps, static_cast<long long>(w.refreshes),
                s.dp_scores == DpScores::Exact ? "exact" : "sum_sq");
    std::printf("  %-6s %-9s %-9s %11s %14s %11s %15s %7s\n", "layer", "m x n", "r x k",
                "gradient", "scores/refresh", "mean/step", "dense m x n", "dense/grass");
  }
  for (const auto& layer : t.layers()) {
    const auto it = w.by_layer.find(layer->name);
    const Wire::Count c = it == w.by_layer.end() ? Wire::Count{} : it->second;
    const int64_t grad = c.grad / s.steps;
    const int64_t expect = layer->r() * layer->side.k * int64_t(sizeof(float));
    if (c.grad != expect * s.steps) {
      std::printf("  %s: counted %lld gradient bytes, the shapes say %lld\n",
                  layer->name.c_str(), static_cast<long long>(c.grad),
                  static_cast<long long>(expect * s.steps));
      ok = false;
    }
    const double per_refresh = w.refreshes ? double(c.scores) / double(w.refreshes) : 0.0;
    const double mean = double(c.grad + c.scores) / steps;
    const int64_t dense = layer->m * layer->n * int64_t(sizeof(float));
    if (print) {
      char mn[32], rk[32];
      std::snprintf(mn, sizeof mn, "%lldx%lld", static_cast<long long>(layer->m),
                    static_cast<long long>(layer->n));
      std::snprintf(rk, sizeof rk, "%lldx%lld", static_cast<long long>(layer->r()),
                    static_cast<long long>(layer->side.k));
      std::printf("  %-6s %-9s %-9s %11lld %14.0f %11.0f %15lld %6.1fx\n", layer->name.c_str(),
                  mn, rk, static_cast<long long>(grad), per_refresh, mean,
                  static_cast<long long>(dense), double(dense) / mean);
    }
  }
  const auto dense = w.by_layer.find("dense");
  const int64_t dense_bytes =
      int64_t((Model::kEmbN + Model::kB1N + Model::kB2N) * sizeof(float));
  if (dense == w.by_layer.end() || dense->second.grad != dense_bytes * s.steps) {
    std::printf("  dense parameters: counted bytes differ from %lld per step\n",
                static_cast<long long>(dense_bytes));
    ok = false;
  } else if (print) {
    std::printf("  %-6s %-9s %-9s %11lld %14s %11lld %15lld %6.1fx  (embedding, b1, b2)\n",
                "dense", "-", "-", static_cast<long long>(dense_bytes), "-",
                static_cast<long long>(dense_bytes), static_cast<long long>(dense_bytes), 1.0);
  }
  if (print) {
    int64_t checks = 0;
    for (const auto& [name, c] : w.by_layer) {
      if (name.size() > 6 && name.compare(name.size() - 6, 6, " check") == 0) checks += c.grad;
    }
    std::printf("  fingerprints: %lld bytes in all (at creation and after each refresh)\n",
                static_cast<long long>(checks));
  }
  return ok;
}

// ---- main ------------------------------------------------------------------------------------


constexpr const char* kUsage =
    "usage: mpirun -np N grass_train_mlp_mpi [--steps N] [--global-batch B] [--refresh-every K] "
    "[--method top_r|multinomial|multinomial_nr|uniform|uniform_nr] [--refresh reset|carry] "
    "[--dp-scores exact|sum_sq] [--backend auto|mpi|nccl] [--check-single] [--compare-scores] "
    "[--fault seed|rank|refresh-every|selection]";

Settings parse(int argc, char** argv, int world) {
  Settings s;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--steps") {
      s.steps = std::atoi(value().c_str());
    } else if (a == "--global-batch") {
      s.global_batch = std::atoi(value().c_str());
    } else if (a == "--refresh-every") {
      s.refresh_every = std::atoll(value().c_str());
    } else if (a == "--method") {
      const std::pair<const char*, grass::Method> t[] = {
          {"top_r", grass::Method::TopR},
          {"multinomial", grass::Method::Multinomial},
          {"multinomial_nr", grass::Method::MultinomialNr},
          {"uniform", grass::Method::Uniform},
          {"uniform_nr", grass::Method::UniformNr}};
      s.method = named("--method", value(), t);
    } else if (a == "--refresh") {
      const std::pair<const char*, grass::RefreshMode> t[] = {
          {"reset", grass::RefreshMode::Reset}, {"carry", grass::RefreshMode::Carry}};
      s.refresh = named("--refresh", value(), t);
    } else if (a == "--dp-scores") {
      const std::pair<const char*, DpScores> t[] = {{"exact", DpScores::Exact},
                                                    {"sum_sq", DpScores::SumSq}};
      s.dp_scores = named("--dp-scores", value(), t);
    } else if (a == "--backend") {
      const std::pair<const char*, std::string> t[] = {
          {"auto", "auto"}, {"mpi", "mpi"}, {"nccl", "nccl"}};
      s.backend = named("--backend", value(), t);
    } else if (a == "--check-single") {
      s.check_single = true;
    } else if (a == "--compare-scores") {
      s.compare_scores = true;
    } else if (a == "--fault") {
      const std::pair<const char*, std::string> t[] = {{"seed", "seed"},
                                                       {"rank", "rank"},
                                                       {"refresh-every", "refresh-every"},
                                                       {"selection", "selection"}};
      s.fault = named("--fault", value(), t);
    } else if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      std::exit(0);
    } else {
      throw std::runtime_error("unknown option " + a + "; " + kUsage);
    }
  }
  if (s.steps < 1) throw std::runtime_error("--steps must be positive");
  if (s.refresh_every < 1) throw std::runtime_error("--refresh-every must be positive");
  if (s.global_batch < 1 || s.global_batch % world != 0) {
    throw std::runtime_error("--global-batch must be a positive multiple of the number of "
                             "ranks (" + std::to_string(world) + "), not " +
                             std::to_string(s.global_batch));
  }
  if (!s.fault.empty() && world < 2) throw std::runtime_error("--fault needs two ranks or more");
#ifndef GRASS_EXAMPLE_NCCL
  if (s.backend == "nccl") {
    throw std::runtime_error("--backend nccl: this build has no NCCL (CMake did not find it)");
  }
#endif
  return s;
}

// Where this rank's grass ops and collectives run.
struct Device {
  grass::Context ctx{nullptr};
  std::shared_ptr<example::CudaDriver> cuda;
#ifdef GRASS_EXAMPLE_NCCL
  std::unique_ptr<DriverStream> stream;
#endif
  std::unique_ptr<Comm> comm;
  grass::Stream get_stream() const {
#ifdef GRASS_EXAMPLE_NCCL
    if (stream) return stream->get();
#endif
    return nullptr;
  }
};

// The device of this rank: the backend asked for, or with "auto" NCCL when every rank can make a
// CUDA context (and the build has NCCL), else MPI on CPU contexts.
Device open_device(const Settings& s, MPI_Comm world, int size, int rank, std::string& note) {
  Device dev;
#ifdef GRASS_EXAMPLE_NCCL
  if (s.backend != "mpi") {
    MPI_Comm node;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    int local = 0;
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    std::string why;
    int usable = 1;
    try {
      dev.ctx = grass::Context::cuda(local);
      dev.cuda = std::make_shared<example::CudaDriver>(local);
      dev.stream = std::make_unique<DriverStream>();
    } catch (const std::exception& e) {
      usable = 0;
      why = e.what();
    }
    MPI_Allreduce(MPI_IN_PLACE, &usable, 1, MPI_INT, MPI_MIN, world);
    if (usable) {
      dev.comm = std::make_unique<NcclComm>(world, size, rank);
      note = "CUDA device " + std::to_string(local) + " per rank, NCCL";
      return dev;
    }
    if (s.backend == "nccl") {
      throw std::runtime_error("--backend nccl: a CUDA context is missing on some rank" +
                               (why.empty() ? std::string() : " (here: " + why + ")"));
    }
    dev = Device{};
  }
#endif
  (void)s;
  dev.ctx = grass::Context::cpu();
  dev.comm = std::make_unique<MpiComm>(world, size, rank);
  note = "CPU contexts, MPI";
  return dev;
}

int run(const Settings& s, int size, int rank) {
  const bool lead = rank == 0;
  std::string note;
  Device dev = open_device(s, MPI_COMM_WORLD, size, rank, note);
  const grass::Stream stream = dev.get_stream();
  if (lead) {
    std::printf("grass %s data parallel over %d ranks (%s): global batch %d, %d per rank\n",
                grass::version(), size, note.c_str(), s.global_batch, s.global_batch / size);
  }
  const MarkovText text(7);
  Trainer trainer(dev.ctx, dev.cuda, *dev.comm, s, stream);
  std::vector<double> losses;
  for (int step = 0; step < s.steps; ++step) {
    losses.push_back(trainer.step(text, uint64_t(step)));
    if (lead && (step % std::max(1, s.steps / 8) == 0 || step + 1 == s.steps)) {
      std::printf("step %4d  loss %.6f\n", step + 1, losses.back());
    }
  }
  const size_t window = std::min<size_t>(5, losses.size());
  double early = 0.0, late = 0.0;
  for (size_t i = 0; i < window; ++i) {
    early += losses[i] / double(window);
    late += losses[losses.size() - 1 - i] / double(window);
  }
  bool ok = late < 0.85 * early;
  if (lead && !ok) {
    std::printf("the loss did not fall enough: %.4f -> %.4f (means of %zu steps)\n", early, late,
                window);
  }
  if (lead && s.compare_scores && s.dp_scores == DpScores::SumSq && size > 1) {
    for (const auto& layer : trainer.layers()) {
      std::printf("%s: sum_sq selected %.1f%% of the rows exact scores select (mean of %d "
                  "refreshes)\n",
                  layer->name.c_str(), 100.0 * layer->overlap / std::max(1, layer->compared),
                  layer->compared);
    }
  }
  ok = report_wire(trainer, s, lead) && ok;

  // Every rank must hold the same weights, bit for bit.
  std::vector<uint64_t> lo, hi;
  dev.comm->min_max({trainer.model().weights_hash()}, lo, hi);
  const bool identical = lo[0] == hi[0];
  if (lead) {
    std::printf("\nweights after %d steps: %s on all %d ranks\n", s.steps,
                identical ? "bit-identical" : "DIFFERENT", size);
  }
  ok = ok && identical;

  if (s.check_single) {
    // The same training in one process on each whole global batch (every rank runs it at once,
    // so that no rank waits on the others).
    LocalComm single;
    Trainer reference(dev.ctx, dev.cuda, single, s, stream);
    double worst_loss = 0.0, worst_weight = 0.0;
    for (int step = 0; step < s.steps; ++step) {
      const double loss = reference.step(text, uint64_t(step));
      worst_loss = std::max(worst_loss, std::fabs(loss - losses[size_t(step)]));
    }
    auto dp = trainer.model().parameters();
    auto one = reference.model().parameters();
    bool same_weights = true;
    for (size_t i = 0; i < dp.size(); ++i) {
      for (size_t j = 0; j < dp[i]->size(); ++j) {
        const float a = dp[i]->host[j], b = one[i]->host[j];
        same_weights = same_weights && a == b;
        worst_weight = std::max(worst_weight, double(std::fabs(a - b)));
      }
    }
    bool same_rows = true;
    for (size_t l = 0; l < trainer.layers().size(); ++l) {
      same_rows = same_rows && trainer.selection(l) == reference.selection(l);
    }
    // Each rank sums its shard's gradient and the all-reduce adds the shards, where the single
    // process sums the whole batch in one pass: the same terms in another order, so the runs
    // agree to float rounding, which Adam's normalized steps keep from growing much.
    const double kLossTol = 1e-5, kWeightTol = 1e-4;
    const bool close = worst_loss <= kLossTol && worst_weight <= kWeightTol;
    if (lead) {
      std::printf("single process on the global batches: largest difference in the loss %.3g "
                  "(tolerance %.0e), in a weight %.3g (tolerance %.0e)%s; last selection %s\n",
                  worst_loss, kLossTol, worst_weight, kWeightTol,
                  same_weights ? ", weights bit-identical" : "",
                  same_rows ? "the same" : "DIFFERENT");
    }
    // sum_sq selects from other scores than the single process: compared, not required to match.
    if (s.dp_scores == DpScores::Exact) ok = ok && close && same_rows;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int size = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int rc = 1;
  try {
    rc = run(parse(argc, argv, size), size, rank);
  } catch (const grass::Error& e) {
    std::fprintf(stderr, "rank %d: grass error %d (%s): %s\n", rank, static_cast<int>(e.status()),
                 e.status_string(), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
  }
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Finalize();
  return rc;
}
