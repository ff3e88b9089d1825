// The task and model parts the next-token examples share (train_mlp.cpp, train_mlp_mpi.cpp): a
// portable random number generator, the synthetic Markov-chain "text", and the plain C++ loops
// of the model's forward and backward passes. Each example keeps its own sizes and its own
// batches; everything here is a function of its arguments alone.
#ifndef GRASS_EXAMPLES_MLP_TASK_HPP
#define GRASS_EXAMPLES_MLP_TASK_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace example {

// splitmix64: small, fast, and the same numbers on every platform and rank.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  int below(int n) { return int(next() % uint64_t(n)); }
};

// A Markov chain over `vocab` tokens in which every token is followed by one of a few favourite
// successors: each token adds the probabilities `favourite` to successors drawn at random, and
// `rest` is spread evenly over all tokens.
class MarkovChain {
 public:
  MarkovChain(uint64_t seed, int vocab, std::initializer_list<double> favourite, double rest)
      : vocab_(vocab), cdf_(size_t(vocab) * size_t(vocab)) {
    Rng rng{seed};
    std::vector<double> p(static_cast<size_t>(vocab));
    for (int a = 0; a < vocab; ++a) {
      std::fill(p.begin(), p.end(), rest / vocab);
      for (double f : favourite) p[size_t(rng.below(vocab))] += f;
      double acc = 0.0, h = 0.0;
      for (int b = 0; b < vocab; ++b) {
        acc += p[size_t(b)];
        cdf_[size_t(a) * size_t(vocab) + size_t(b)] = acc;
        h -= p[size_t(b)] * std::log(p[size_t(b)]);
      }
      entropy_ += h / vocab;
    }
  }

  // A token drawn uniformly and its successor drawn from the chain, both from `rng`.
  void draw(Rng& rng, int& token, int& successor) const {
    const int a = rng.below(vocab_);
    const double u = rng.uniform();
    const double* row = &cdf_[size_t(a) * size_t(vocab_)];
    int b = 0;
    while (b < vocab_ - 1 && row[b] <= u) ++b;
    token = a;
    successor = b;
  }

  // The loss of a perfect model: the mean conditional entropy (nats).
  double entropy() const { return entropy_; }

 private:
  int vocab_;
  std::vector<double> cdf_;
  double entropy_ = 0.0;
};

// `n` values drawn uniformly from [-scale, scale).
inline std::vector<float> init(Rng& rng, size_t n, float scale) {
  std::vector<float> v(n);
  for (auto& x : v) x = scale * float(2.0 * rng.uniform() - 1.0);
  return v;
}

// out (rows x cols) = a (rows x inner) * b^T (b is cols x inner) + bias
inline void matmul_bt(const float* a, const float* b, const float* bias, float* out, int rows,
                      int inner, int cols) {
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      float s = bias[j];
      for (int k = 0; k < inner; ++k) s += a[i * inner + k] * b[j * inner + k];
      out[i * cols + j] = s;
    }
  }
}

// out (rows x cols) = a (rows x inner) * b (inner x cols)
inline void matmul(const float* a, const float* b, float* out, int rows, int inner, int cols) {
  for (int i = 0; i < rows; ++i) {
    float* o = out + i * cols;
    std::fill(o, o + cols, 0.0f);
    for (int k = 0; k < inner; ++k) {
      const float aik = a[i * inner + k];
      for (int j = 0; j < cols; ++j) o[j] += aik * b[k * cols + j];
    }
  }
}

// The cross-entropy of one token's `logits` (vocab of them) against `label`, returned in nats;
// writes d(loss / norm)/d logits = (softmax - onehot) / norm into `d_logits`.
inline double softmax_cross_entropy(const float* logits, float* d_logits, int vocab, int label,
                                    int norm) {
  const float top = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int v = 0; v < vocab; ++v) sum += std::exp(double(logits[v] - top));
  for (int v = 0; v < vocab; ++v) {
    d_logits[v] = float(std::exp(double(logits[v] - top)) / sum) / norm;
  }
  d_logits[label] -= 1.0f / norm;
  return std::log(sum) - double(logits[label] - top);
}

// The enumerator of `table` named `name` (the command-line option `what` gave it).
template <class E, size_t N>
E named(const char* what, const std::string& name, const std::pair<const char*, E> (&table)[N]) {
  for (const auto& [key, value] : table) {
    if (name == key) return value;
  }
  std::string known;
  for (const auto& entry : table) known += std::string(known.empty() ? "" : ", ") + entry.first;
  throw std::runtime_error(std::string(what) + " must be one of " + known + ", not " + name);
}

}  // namespace example

#endif  // GRASS_EXAMPLES_MLP_TASK_HPP
