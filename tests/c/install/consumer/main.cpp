// Consumer of an installed grass through grass.hpp: a few GRASS steps on a small layer.
#include <grass.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

int main() {
  if (std::strcmp(grass::version(), GRASS_EXPECTED_VERSION) != 0 || !grass::abi_compatible()) {
    std::printf("version mismatch: library %s, package %s\n", grass::version(),
                GRASS_EXPECTED_VERSION);
    return 1;
  }
  try {
    auto ctx = grass::Context::cpu();
    auto opt = grass::Optimizer::sparse(ctx, grass::ProjectionConfig().rank(4),
                                        grass::AdamWConfig(), 16, 8, 4, grass::Dtype::F32,
                                        grass::Dtype::F32);
    std::vector<float> w(16 * 8, 0.5f), x(4 * 8), dy(4 * 16);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * float(i % 7) - 0.3f;
    for (size_t i = 0; i < dy.size(); ++i) dy[i] = 0.05f * float(i % 5) - 0.1f;
    for (int step = 0; step < 3; ++step) {
      opt.backward(4, x.data(), dy.data());
      opt.step(w.data(), 0.01f);
    }
    std::printf("consumer_cpp: grass %s, %lld steps, %lld state elements\n", grass::version(),
                static_cast<long long>(opt.info().steps),
                static_cast<long long>(opt.info().state_elements));
    return opt.info().steps == 3 ? 0 : 1;
  } catch (const grass::Error& e) {
    std::printf("consumer_cpp: %s\n", e.what());
    return 1;
  }
}
