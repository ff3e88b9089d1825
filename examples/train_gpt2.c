/* train_gpt2.c: a GPT-2 trained on the bytes of a text file, on the CPU, with grass.
 *
 * One file of C11 in the manner of llm.c's train_gpt2.c: the forward and backward passes are
 * written out by hand, layer by layer, and the optimizers come from grass (include/grass.h).
 *
 *   model   token and position embeddings; L blocks of pre-LayerNorm causal self-attention
 *           (qkv projection, output projection) and a GELU MLP (fc, proj), each with a residual;
 *           a final LayerNorm; the LM head is tied to the token embedding (logits = x wteᵀ).
 *           Default C=128, L=4, H=4, T=64, vocab 256 (bytes): 0.83M parameters.
 *   grass   (--optimizer grass, the default) the four weight matrices of every block (qkv,
 *           attn proj, fc, mlp proj) are trained through grass's sparse optimizers: the backward
 *           pass hands each one the layer's input X and output gradient dY
 *           (grass_optimizer_backward), which accumulates the r selected rows of dYᵀX, so the
 *           full gradient dW of these weights is never formed (dX = dY W still is). Every other
 *           parameter (embeddings, LayerNorms, biases) goes through grass's dense AdamW.
 *   adamw   (--optimizer adamw) every parameter through grass's dense AdamW, dW formed in full.
 *
 * Every step: global-norm gradient clipping over all optimizers (grass_optimizer_grad_sq_norm
 * of each, then grass_optimizer_step_scaled with the clip factor), a cosine learning-rate
 * schedule with linear warmup, a learning rate for the grass matrices (--grass-lr) and one for
 * the dense parameters (--lr), decoupled weight decay on the matrices and embeddings.
 * Checkpoints: PREFIX.model (the weights, this file's format) and PREFIX.grass (every optimizer,
 * grass_checkpoint_save); --resume PREFIX continues bit-identically, since each step's batch is
 * a function of (seed, step) alone.
 *
 *   grass_train_gpt2 TEXT_FILE [options]     (--help lists them)
 *   grass_train_gpt2 --check-grad            (backward against finite differences)
 *
 * Build: CMake target grass_train_gpt2 (examples/CMakeLists.txt), or by hand:
 *   cc -O3 -fopenmp examples/train_gpt2.c -Iinclude -Ltarget/release -lgrass -lm
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "grass.h"

static const char *prog = "grass_train_gpt2";

/* A mistake in the command line or the input files: one line, exit 2. */
static void usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (--help lists the options)\n");
    va_end(ap);
    exit(2);
}

/* A failed grass call: its status and grass's message. Statuses 1-99 are the caller's
 * mistakes (e.g. a --rank larger than a layer), reported like a bad flag (exit 2). */
static void grass_check(grass_status status, const char *what) {
    if (status == GRASS_OK) return;
    fprintf(stderr, "%s: %s failed: %s: %s\n", prog, what, grass_status_string(status),
            grass_last_error_message());
    exit(status < 100 ? 2 : 1);
}

static void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size);
    if (!p) {
        fprintf(stderr, "%s: out of memory (%zu x %zu bytes)\n", prog, count, size);
        exit(1);
    }
    return p;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* ---- random numbers: splitmix64, reproducible everywhere ------------------------------- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rand_uniform(uint64_t *state) { /* in (0, 1) */
    return ((float)(splitmix64(state) >> 40) + 0.5f) / 16777216.0f;
}
static float rand_normal(uint64_t *state) {
    float u1 = rand_uniform(state), u2 = rand_uniform(state);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ---- the layers: forward and backward --------------------------------------------------- */
/* Shapes: B batch, T time, C channels, OC output channels, NH heads, V vocabulary. Every
 * tensor is row-major and contiguous; a weight of a linear layer is OC x C (out = inp Wᵀ + b),
 * the layout grass takes (W m x n, X b x n, dY b x m). Backward functions add (+=) into the
 * gradients, which the caller zeroes before the backward pass. */

static void encoder_forward(float *out, const int *inp, const float *wte, const float *wpe,
                            int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float *o = out + ((size_t)b * T + t) * C;
            const float *te = wte + (size_t)inp[b * T + t] * C, *pe = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) o[i] = te[i] + pe[i];
        }
}

static void encoder_backward(float *dwte, float *dwpe, const float *dout, const int *inp,
                             int B, int T, int C) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *d = dout + ((size_t)b * T + t) * C;
            float *dte = dwte + (size_t)inp[b * T + t] * C, *dpe = dwpe + (size_t)t * C;
            for (int i = 0; i < C; i++) {
                dte[i] += d[i];
                dpe[i] += d[i];
            }
        }
}

static void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, int BT, int C) {
    for (int bt = 0; bt < BT; bt++) {
        const float *x = inp + (size_t)bt * C;
        float m = 0.0f, v = 0.0f;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        v /= C;
        float s = 1.0f / sqrtf(v + 1e-5f);
        float *o = out + (size_t)bt * C;
        for (int i = 0; i < C; i++) o[i] = (x[i] - m) * s * weight[i] + bias[i];
        mean[bt] = m;
        rstd[bt] = s;
    }
}

static void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, int BT, int C) {
    for (int bt = 0; bt < BT; bt++) {
        const float *d = dout + (size_t)bt * C, *x = inp + (size_t)bt * C;
        float *dx = dinp + (size_t)bt * C;
        float m = mean[bt], s = rstd[bt];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= C;
        dnorm_norm_mean /= C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];
            dbias[i] += d[i];
            dweight[i] += norm * d[i];
            dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

/* out (BT x OC) = inp (BT x C) Wᵀ + bias, W of OC x C. W is first transposed into wt (C x OC)
 * so that the inner loop runs over contiguous outputs (vectorizes without reassociation). */
static void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int BT, int C, int OC, float *wt) {
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < C; i++) wt[(size_t)i * OC + o] = weight[(size_t)o * C + i];
#pragma omp parallel for
    for (int bt = 0; bt < BT; bt++) {
        float *restrict y = out + (size_t)bt * OC;
        const float *x = inp + (size_t)bt * C;
        for (int o = 0; o < OC; o++) y[o] = bias ? bias[o] : 0.0f;
        for (int i = 0; i < C; i++) {
            const float xi = x[i];
            const float *restrict w = wt + (size_t)i * OC;
            for (int o = 0; o < OC; o++) y[o] += xi * w[o];
        }
    }
}

/* dinp += dout W; dweight += doutᵀ inp (skipped when dweight is NULL: grass forms only its
 * selected rows, from inp and dout); dbias += the column sums of dout (when not NULL). */
static void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, int BT, int C, int OC) {
#pragma omp parallel for
    for (int bt = 0; bt < BT; bt++) {
        float *restrict dx = dinp + (size_t)bt * C;
        const float *dy = dout + (size_t)bt * OC;
        for (int o = 0; o < OC; o++) {
            const float g = dy[o];
            const float *restrict w = weight + (size_t)o * C;
            for (int i = 0; i < C; i++) dx[i] += g * w[i];
        }
    }
    if (!dweight && !dbias) return;
#pragma omp parallel for
    for (int o = 0; o < OC; o++) {
        float *restrict dw = dweight ? dweight + (size_t)o * C : NULL;
        float db = 0.0f;
        for (int bt = 0; bt < BT; bt++) {
            const float g = dout[(size_t)bt * OC + o];
            db += g;
            if (dw) {
                const float *restrict x = inp + (size_t)bt * C;
                for (int i = 0; i < C; i++) dw[i] += g * x[i];
            }
        }
        if (dbias) dbias[o] += db;
    }
}

/* inp (B,T,3C) holds q, k, v; out (B,T,C). preatt and att (B,NH,T,T): the scaled scores and
 * their causal softmax. */
static void attention_forward(float *out, float *preatt, float *att, const float *inp, int B,
                              int T, int C, int NH) {
    const int C3 = 3 * C, hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const float *q = inp + ((size_t)b * T + t) * C3 + h * hs;
                float *pre = preatt + (((size_t)b * NH + h) * T + t) * T;
                float *a = att + (((size_t)b * NH + h) * T + t) * T;
                float maxval = -FLT_MAX;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = inp + ((size_t)b * T + t2) * C3 + h * hs + C;
                    float dot = 0.0f;
                    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                    pre[t2] = dot * scale;
                    if (pre[t2] > maxval) maxval = pre[t2];
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    a[t2] = expf(pre[t2] - maxval);
                    sum += a[t2];
                }
                for (int t2 = 0; t2 < T; t2++) a[t2] = t2 <= t ? a[t2] / sum : 0.0f;
                float *o = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) o[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = inp + ((size_t)b * T + t2) * C3 + h * hs + 2 * C;
                    for (int i = 0; i < hs; i++) o[i] += a[t2] * v[i];
                }
            }
}

/* Each (b, h) writes only its own slices of dinp, datt and dpreatt: parallel and deterministic. */
static void attention_backward(float *dinp, float *dpreatt, float *datt, const float *dout,
                               const float *inp, const float *att, int B, int T, int C, int NH) {
    const int C3 = 3 * C, hs = C / NH;
    const float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const size_t row = (((size_t)b * NH + h) * T + t) * T;
                const float *a = att + row;
                float *da = datt + row, *dpre = dpreatt + row;
                const float *q = inp + ((size_t)b * T + t) * C3 + h * hs;
                float *dq = dinp + ((size_t)b * T + t) * C3 + h * hs;
                const float *d = dout + ((size_t)b * T + t) * C + h * hs;
                for (int t2 = 0; t2 <= t; t2++) { /* out = att v */
                    const float *v = inp + ((size_t)b * T + t2) * C3 + h * hs + 2 * C;
                    float *dv = dinp + ((size_t)b * T + t2) * C3 + h * hs + 2 * C;
                    for (int i = 0; i < hs; i++) {
                        da[t2] += v[i] * d[i];
                        dv[i] += a[t2] * d[i];
                    }
                }
                float dot = 0.0f; /* softmax: dpre = a (da - <a, da>) */
                for (int t2 = 0; t2 <= t; t2++) dot += a[t2] * da[t2];
                for (int t2 = 0; t2 <= t; t2++) dpre[t2] += a[t2] * (da[t2] - dot);
                for (int t2 = 0; t2 <= t; t2++) { /* pre = scale q·k */
                    const float *k = inp + ((size_t)b * T + t2) * C3 + h * hs + C;
                    float *dk = dinp + ((size_t)b * T + t2) * C3 + h * hs + C;
                    const float g = dpre[t2] * scale;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += k[i] * g;
                        dk[i] += q[i] * g;
                    }
                }
            }
}

#define GELU_SCALE 0.7978845608f /* sqrt(2/pi) */
static void gelu_forward(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

static void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
        float sech2 = 1.0f - th * th;
        float local = 0.5f * (1.0f + th) +
                      0.5f * x * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += local * dout[i];
    }
}

static void residual_forward(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void residual_backward(float *da, float *db, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

/* probs = softmax(logits) per row, losses = -log probs[target]. */
static void softmax_crossentropy_forward(float *probs, float *losses, const float *logits,
                                         const int *targets, int BT, int V) {
    for (int bt = 0; bt < BT; bt++) {
        const float *l = logits + (size_t)bt * V;
        float *p = probs + (size_t)bt * V;
        float maxval = -FLT_MAX, sum = 0.0f;
        for (int i = 0; i < V; i++) maxval = l[i] > maxval ? l[i] : maxval;
        for (int i = 0; i < V; i++) {
            p[i] = expf(l[i] - maxval);
            sum += p[i];
        }
        for (int i = 0; i < V; i++) p[i] /= sum;
        losses[bt] = -logf(p[targets[bt]]);
    }
}

/* dlogits for the mean loss over BT positions. */
static void softmax_crossentropy_backward(float *dlogits, const float *probs, const int *targets,
                                          int BT, int V) {
    const float dloss = 1.0f / BT;
    for (int bt = 0; bt < BT; bt++) {
        float *d = dlogits + (size_t)bt * V;
        const float *p = probs + (size_t)bt * V;
        for (int i = 0; i < V; i++) d[i] += (p[i] - (i == targets[bt])) * dloss;
    }
}

/* ---- the model --------------------------------------------------------------------------- */

typedef struct {
    int V, maxT, L, NH, C;
} Config;

/* The parameters, in this order in one allocation (and in the .model file). */
enum {
    P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB, P_LN2W, P_LN2B,
    P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB, NUM_PARAMS
};
static const char *param_names[NUM_PARAMS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"};

/* The weight matrices that grass projects: qkv, attn proj, fc, mlp proj. */
static int is_matrix(int p) { return p == P_QKVW || p == P_ATTPROJW || p == P_FCW || p == P_FCPROJW; }

static void param_sizes(const Config *c, size_t sizes[NUM_PARAMS]) {
    size_t V = c->V, T = c->maxT, L = c->L, C = c->C;
    sizes[P_WTE] = V * C;
    sizes[P_WPE] = T * C;
    sizes[P_LN1W] = sizes[P_LN1B] = L * C;
    sizes[P_QKVW] = L * 3 * C * C;
    sizes[P_QKVB] = L * 3 * C;
    sizes[P_ATTPROJW] = L * C * C;
    sizes[P_ATTPROJB] = L * C;
    sizes[P_LN2W] = sizes[P_LN2B] = L * C;
    sizes[P_FCW] = L * 4 * C * C;
    sizes[P_FCB] = L * 4 * C;
    sizes[P_FCPROJW] = L * C * 4 * C;
    sizes[P_FCPROJB] = L * C;
    sizes[P_LNFW] = sizes[P_LNFB] = C;
}

/* Activations kept for the backward pass (and their gradients, same layout). */
enum {
    A_ENCODED, A_LN1, A_LN1_MEAN, A_LN1_RSTD, A_QKV, A_ATTY, A_PREATT, A_ATT, A_ATTPROJ,
    A_RESIDUAL2, A_LN2, A_LN2_MEAN, A_LN2_RSTD, A_FCH, A_FCH_GELU, A_FCPROJ, A_RESIDUAL3,
    A_LNF, A_LNF_MEAN, A_LNF_RSTD, A_LOGITS, A_PROBS, A_LOSSES, NUM_ACTS
};

static void act_sizes(const Config *c, int B, int T, size_t sizes[NUM_ACTS]) {
    size_t BT = (size_t)B * T, L = c->L, C = c->C, NH = c->NH, V = c->V;
    sizes[A_ENCODED] = BT * C;
    sizes[A_LN1] = L * BT * C;
    sizes[A_LN1_MEAN] = sizes[A_LN1_RSTD] = L * BT;
    sizes[A_QKV] = L * BT * 3 * C;
    sizes[A_ATTY] = L * BT * C;
    sizes[A_PREATT] = sizes[A_ATT] = L * B * NH * T * T;
    sizes[A_ATTPROJ] = sizes[A_RESIDUAL2] = L * BT * C;
    sizes[A_LN2] = L * BT * C;
    sizes[A_LN2_MEAN] = sizes[A_LN2_RSTD] = L * BT;
    sizes[A_FCH] = sizes[A_FCH_GELU] = L * BT * 4 * C;
    sizes[A_FCPROJ] = sizes[A_RESIDUAL3] = L * BT * C;
    sizes[A_LNF] = BT * C;
    sizes[A_LNF_MEAN] = sizes[A_LNF_RSTD] = BT;
    sizes[A_LOGITS] = sizes[A_PROBS] = BT * V;
    sizes[A_LOSSES] = BT;
}

/* One optimizer and the parameters it trains. */
typedef struct {
    char name[32];
    grass_optimizer *opt;
    float *w;
    float *grad;   /* the dense gradient; NULL for a grass layer (its gradient is inside opt) */
    size_t numel;
    int sparse;    /* 1: a projected weight (--grass-lr); 0: dense AdamW (--lr) */
    /* a grass layer's X and dY of the last backward pass (in acts / grad_acts, alive until the
     * step): the full-rank residual's input (--residual) */
    const float *x, *dy;
} Handle;

typedef struct {
    Config config;
    int B, T;
    size_t param_sizes[NUM_PARAMS], num_params;
    float *params, *param[NUM_PARAMS];
    float *grads, *grad[NUM_PARAMS]; /* grad[p] is NULL for the matrices in grass mode */
    size_t act_sizes[NUM_ACTS], num_acts;
    float *acts, *act[NUM_ACTS], *grad_acts, *grad_act[NUM_ACTS];
    float *wt; /* scratch for matmul_forward's transposed weight */
    int *inputs, *targets;
    /* grass: the sparse optimizers of layer l's matrices are layer_opt[l][0..3] (qkv, attproj,
     * fc, fcproj); NULL in adamw mode. */
    grass_optimizer *(*layer_opt)[4];
    Handle *(*layer_handle)[4]; /* the same optimizers' handles */
    Handle *handles;
    int num_handles;
} GPT2;

static void gpt2_build(GPT2 *m, Config c, int B, int T, int grass_mode, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->config = c;
    m->B = B;
    m->T = T;
    param_sizes(&c, m->param_sizes);
    size_t ngrad = 0;
    for (int p = 0; p < NUM_PARAMS; p++) {
        m->num_params += m->param_sizes[p];
        if (!(grass_mode && is_matrix(p))) ngrad += m->param_sizes[p];
    }
    m->params = xcalloc(m->num_params, sizeof(float));
    m->grads = xcalloc(ngrad, sizeof(float));
    float *pp = m->params, *gp = m->grads;
    for (int p = 0; p < NUM_PARAMS; p++) {
        m->param[p] = pp;
        pp += m->param_sizes[p];
        if (!(grass_mode && is_matrix(p))) {
            m->grad[p] = gp;
            gp += m->param_sizes[p];
        }
    }
    act_sizes(&c, B, T, m->act_sizes);
    size_t nact = 0;
    for (int a = 0; a < NUM_ACTS; a++) nact += m->act_sizes[a];
    m->acts = xcalloc(nact, sizeof(float));
    m->grad_acts = xcalloc(nact, sizeof(float));
    m->num_acts = nact;
    for (size_t a = 0, off = 0; a < NUM_ACTS; off += m->act_sizes[a], a++) {
        m->act[a] = m->acts + off;
        m->grad_act[a] = m->grad_acts + off;
    }
    m->wt = xcalloc((size_t)c.C * (4 * c.C > c.V ? 4 * c.C : c.V), sizeof(float));
    m->inputs = xcalloc((size_t)B * T, sizeof(int));
    m->targets = xcalloc((size_t)B * T, sizeof(int));

    /* GPT-2's initialization: N(0, 0.02), residual projections scaled by 1/sqrt(2L), biases
     * zero, LayerNorm weights one. */
    uint64_t rng = seed;
    for (int p = 0; p < NUM_PARAMS; p++) {
        float *w = m->param[p];
        float std = 0.02f;
        if (p == P_ATTPROJW || p == P_FCPROJW) std /= sqrtf(2.0f * c.L);
        for (size_t i = 0; i < m->param_sizes[p]; i++) {
            if (p == P_LN1W || p == P_LN2W || p == P_LNFW) w[i] = 1.0f;
            else if (p == P_WTE || p == P_WPE || is_matrix(p)) w[i] = std * rand_normal(&rng);
            else w[i] = 0.0f;
        }
    }
}

/* Mean loss over the B x T positions of m->inputs / m->targets. */
static float gpt2_forward(GPT2 *m) {
    const int B = m->B, T = m->T, BT = B * T, C = m->config.C, NH = m->config.NH,
              V = m->config.V;
    float **a = m->act, **p = m->param;
    encoder_forward(a[A_ENCODED], m->inputs, p[P_WTE], p[P_WPE], B, T, C);
    for (int l = 0; l < m->config.L; l++) {
        const float *residual = l == 0 ? a[A_ENCODED] : a[A_RESIDUAL3] + (size_t)(l - 1) * BT * C;
        const size_t lc = (size_t)l * C, lbt = (size_t)l * BT, lbtc = lbt * C;
        float *ln1 = a[A_LN1] + lbtc, *qkv = a[A_QKV] + lbtc * 3, *atty = a[A_ATTY] + lbtc;
        float *preatt = a[A_PREATT] + (size_t)l * B * NH * T * T;
        float *att = a[A_ATT] + (size_t)l * B * NH * T * T;
        float *attproj = a[A_ATTPROJ] + lbtc, *residual2 = a[A_RESIDUAL2] + lbtc;
        float *ln2 = a[A_LN2] + lbtc, *fch = a[A_FCH] + lbtc * 4, *fch_gelu = a[A_FCH_GELU] + lbtc * 4;
        float *fcproj = a[A_FCPROJ] + lbtc, *residual3 = a[A_RESIDUAL3] + lbtc;
        layernorm_forward(ln1, a[A_LN1_MEAN] + lbt, a[A_LN1_RSTD] + lbt, residual,
                          p[P_LN1W] + lc, p[P_LN1B] + lc, BT, C);
        matmul_forward(qkv, ln1, p[P_QKVW] + lc * 3 * C, p[P_QKVB] + lc * 3, BT, C, 3 * C, m->wt);
        attention_forward(atty, preatt, att, qkv, B, T, C, NH);
        matmul_forward(attproj, atty, p[P_ATTPROJW] + lc * C, p[P_ATTPROJB] + lc, BT, C, C, m->wt);
        residual_forward(residual2, residual, attproj, (size_t)BT * C);
        layernorm_forward(ln2, a[A_LN2_MEAN] + lbt, a[A_LN2_RSTD] + lbt, residual2,
                          p[P_LN2W] + lc, p[P_LN2B] + lc, BT, C);
        matmul_forward(fch, ln2, p[P_FCW] + lc * 4 * C, p[P_FCB] + lc * 4, BT, C, 4 * C, m->wt);
        gelu_forward(fch_gelu, fch, (size_t)BT * 4 * C);
        matmul_forward(fcproj, fch_gelu, p[P_FCPROJW] + lc * 4 * C, p[P_FCPROJB] + lc, BT, 4 * C,
                       C, m->wt);
        residual_forward(residual3, residual2, fcproj, (size_t)BT * C);
    }
    const float *last = a[A_RESIDUAL3] + (size_t)(m->config.L - 1) * BT * C;
    layernorm_forward(a[A_LNF], a[A_LNF_MEAN], a[A_LNF_RSTD], last, p[P_LNFW], p[P_LNFB], BT, C);
    matmul_forward(a[A_LOGITS], a[A_LNF], p[P_WTE], NULL, BT, C, V, m->wt); /* tied head */
    softmax_crossentropy_forward(a[A_PROBS], a[A_LOSSES], a[A_LOGITS], m->targets, BT, V);
    double loss = 0.0;
    for (int i = 0; i < BT; i++) loss += a[A_LOSSES][i];
    return (float)(loss / BT);
}

/* Hands a projected weight's X (b x n) and dY (b x m) to its grass optimizer, which adds the
 * selected rows of dYᵀX to its accumulator; the handle remembers them for the residual. */
static void grass_feed(Handle *h, int BT, const float *x, const float *dy) {
    grass_check(grass_optimizer_backward(h->opt, BT, x, dy, NULL, NULL),
                "grass_optimizer_backward");
    h->x = x;
    h->dy = dy;
}

/* Gradients of the mean loss of the last forward pass: into m->grad for the dense parameters
 * (and every parameter in adamw mode), into the grass optimizers for the matrices. */
static void gpt2_backward(GPT2 *m) {
    const int B = m->B, T = m->T, BT = B * T, C = m->config.C, NH = m->config.NH,
              V = m->config.V, L = m->config.L;
    float **a = m->act, **da = m->grad_act, **p = m->param, **g = m->grad;
    for (int q = 0; q < NUM_PARAMS; q++)
        if (g[q]) memset(g[q], 0, m->param_sizes[q] * sizeof(float));
    memset(m->grad_acts, 0, m->num_acts * sizeof(float));

    softmax_crossentropy_backward(da[A_LOGITS], a[A_PROBS], m->targets, BT, V);
    matmul_backward(da[A_LNF], g[P_WTE], NULL, da[A_LOGITS], a[A_LNF], p[P_WTE], BT, C, V);
    const float *last = a[A_RESIDUAL3] + (size_t)(L - 1) * BT * C;
    float *dlast = da[A_RESIDUAL3] + (size_t)(L - 1) * BT * C;
    layernorm_backward(dlast, g[P_LNFW], g[P_LNFB], da[A_LNF], last, p[P_LNFW], a[A_LNF_MEAN],
                       a[A_LNF_RSTD], BT, C);
    for (int l = L - 1; l >= 0; l--) {
        const float *residual = l == 0 ? a[A_ENCODED] : a[A_RESIDUAL3] + (size_t)(l - 1) * BT * C;
        float *dresidual = l == 0 ? da[A_ENCODED] : da[A_RESIDUAL3] + (size_t)(l - 1) * BT * C;
        const size_t lc = (size_t)l * C, lbt = (size_t)l * BT, lbtc = lbt * C;
        const size_t latt = (size_t)l * B * NH * T * T;
        Handle **opt = m->layer_handle ? m->layer_handle[l] : NULL;
#define W(P, size) p[P] + lc * (size)
#define G(P, size) (g[P] ? g[P] + lc * (size) : NULL)
        /* residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))) */
        residual_backward(da[A_RESIDUAL2] + lbtc, da[A_FCPROJ] + lbtc, da[A_RESIDUAL3] + lbtc,
                          (size_t)BT * C);
        matmul_backward(da[A_FCH_GELU] + lbtc * 4, G(P_FCPROJW, 4 * C), G(P_FCPROJB, 1),
                        da[A_FCPROJ] + lbtc, a[A_FCH_GELU] + lbtc * 4, W(P_FCPROJW, 4 * C), BT,
                        4 * C, C);
        if (opt) grass_feed(opt[3], BT, a[A_FCH_GELU] + lbtc * 4, da[A_FCPROJ] + lbtc);
        gelu_backward(da[A_FCH] + lbtc * 4, a[A_FCH] + lbtc * 4, da[A_FCH_GELU] + lbtc * 4,
                      (size_t)BT * 4 * C);
        matmul_backward(da[A_LN2] + lbtc, G(P_FCW, 4 * C), G(P_FCB, 4), da[A_FCH] + lbtc * 4,
                        a[A_LN2] + lbtc, W(P_FCW, 4 * C), BT, C, 4 * C);
        if (opt) grass_feed(opt[2], BT, a[A_LN2] + lbtc, da[A_FCH] + lbtc * 4);
        layernorm_backward(da[A_RESIDUAL2] + lbtc, G(P_LN2W, 1), G(P_LN2B, 1), da[A_LN2] + lbtc,
                           a[A_RESIDUAL2] + lbtc, W(P_LN2W, 1), a[A_LN2_MEAN] + lbt,
                           a[A_LN2_RSTD] + lbt, BT, C);
        /* residual2 = residual + attproj(attention(qkv(ln1(residual)))) */
        residual_backward(dresidual, da[A_ATTPROJ] + lbtc, da[A_RESIDUAL2] + lbtc, (size_t)BT * C);
        matmul_backward(da[A_ATTY] + lbtc, G(P_ATTPROJW, C), G(P_ATTPROJB, 1),
                        da[A_ATTPROJ] + lbtc, a[A_ATTY] + lbtc, W(P_ATTPROJW, C), BT, C, C);
        if (opt) grass_feed(opt[1], BT, a[A_ATTY] + lbtc, da[A_ATTPROJ] + lbtc);
        attention_backward(da[A_QKV] + lbtc * 3, da[A_PREATT] + latt, da[A_ATT] + latt,
                           da[A_ATTY] + lbtc, a[A_QKV] + lbtc * 3, a[A_ATT] + latt, B, T, C, NH);
        matmul_backward(da[A_LN1] + lbtc, G(P_QKVW, 3 * C), G(P_QKVB, 3), da[A_QKV] + lbtc * 3,
                        a[A_LN1] + lbtc, W(P_QKVW, 3 * C), BT, C, 3 * C);
        if (opt) grass_feed(opt[0], BT, a[A_LN1] + lbtc, da[A_QKV] + lbtc * 3);
        layernorm_backward(dresidual, G(P_LN1W, 1), G(P_LN1B, 1), da[A_LN1] + lbtc, residual,
                           W(P_LN1W, 1), a[A_LN1_MEAN] + lbt, a[A_LN1_RSTD] + lbt, BT, C);
#undef W
#undef G
    }
    encoder_backward(g[P_WTE], g[P_WPE], da[A_ENCODED], m->inputs, B, T, C);
}

static void gpt2_free(GPT2 *m) {
    for (int h = 0; h < m->num_handles; h++) grass_optimizer_destroy(m->handles[h].opt);
    free(m->handles);
    free(m->layer_opt);
    free(m->layer_handle);
    free(m->params);
    free(m->grads);
    free(m->acts);
    free(m->grad_acts);
    free(m->wt);
    free(m->inputs);
    free(m->targets);
}

/* ---- optimizers -------------------------------------------------------------------------- */

typedef struct {
    const char *data_path, *optimizer, *save, *resume;
    int steps, stop_at, B, T, val_every, val_batches, warmup, check_grad;
    float lr, grass_lr, min_lr_frac, weight_decay, clip, val_frac;
    float residual_scale; /* > 0: the full-rank residual on the grass layers at this scale */
    int row_warmup;       /* >= 0: the grass layers' row warm-up; -1: the library's default */
    int64_t rank, refresh_every;
    uint64_t seed;
    Config config;
} Options;

/* grass mode: one sparse optimizer per layer and matrix, one dense optimizer per other
 * parameter tensor. adamw mode: one dense optimizer per parameter tensor. Weight decay on the
 * matrices and the embeddings, none on LayerNorms and biases. */
static void make_optimizers(GPT2 *m, const Options *o, grass_context *ctx, int grass_mode) {
    const Config *c = &m->config;
    grass_adamw_config decay, no_decay;
    grass_check(grass_adamw_config_init(&decay), "grass_adamw_config_init");
    decay.weight_decay = o->weight_decay;
    if (o->row_warmup >= 0) decay.row_warmup = o->row_warmup; /* grass layers only */
    no_decay = decay;
    no_decay.weight_decay = 0.0f;
    grass_projection_config pc;
    grass_check(grass_projection_config_init(&pc), "grass_projection_config_init");
    pc.rank = o->rank; /* 0: the library's rule for each layer (grass_default_rank) */
    if (o->refresh_every) pc.refresh_every = o->refresh_every; /* else the library's default */
    pc.seed = o->seed;

    m->handles = xcalloc(NUM_PARAMS + 4 * (size_t)c->L, sizeof(Handle));
    if (grass_mode) {
        m->layer_opt = xcalloc(c->L, sizeof *m->layer_opt);
        m->layer_handle = xcalloc(c->L, sizeof *m->layer_handle);
    }
    for (int p = 0; p < NUM_PARAMS; p++) {
        const grass_adamw_config *ac =
            (p == P_WTE || p == P_WPE || is_matrix(p)) ? &decay : &no_decay;
        if (grass_mode && is_matrix(p)) {
            const int which = p == P_QKVW ? 0 : p == P_ATTPROJW ? 1 : p == P_FCW ? 2 : 3;
            const int64_t rows = which == 0 ? 3 * c->C : which == 2 ? 4 * c->C : c->C;
            const int64_t cols = which == 3 ? 4 * c->C : c->C;
            for (int l = 0; l < c->L; l++) {
                Handle *h = &m->handles[m->num_handles++];
                snprintf(h->name, sizeof h->name, "%s[%d]", param_names[p], l);
                pc.layer_id = (uint32_t)(4 * l + which);
                char what[96];
                snprintf(what, sizeof what, "grass_optimizer_create_sparse (%s, %lld x %lld)",
                         h->name, (long long)rows, (long long)cols);
                grass_check(grass_optimizer_create_sparse(ctx, &pc, ac, rows, cols,
                                                          (int64_t)m->B * m->T, GRASS_DTYPE_F32,
                                                          GRASS_DTYPE_F32, &h->opt),
                            what);
                h->w = m->param[p] + (size_t)l * rows * cols;
                h->numel = (size_t)rows * cols;
                h->sparse = 1;
                m->layer_opt[l][which] = h->opt;
                m->layer_handle[l][which] = h;
            }
        } else {
            Handle *h = &m->handles[m->num_handles++];
            snprintf(h->name, sizeof h->name, "%s", param_names[p]);
            grass_check(grass_optimizer_create_dense(ctx, ac, (int64_t)m->param_sizes[p],
                                                     GRASS_DTYPE_F32, GRASS_DTYPE_F32, &h->opt),
                        "grass_optimizer_create_dense");
            /* Its own layer id, which its checkpoint records: LayerNorms and biases of the same
             * size cannot be restored into each other (the sparse ones are 0 .. 4L-1). */
            grass_check(grass_optimizer_set_layer_id(h->opt, (uint32_t)(4 * c->L + p)),
                        "grass_optimizer_set_layer_id");
            h->w = m->param[p];
            h->grad = m->grad[p];
            h->numel = m->param_sizes[p];
        }
    }
}

/* Learning-rate multiplier at `step` (0-based): linear warmup to 1, then a cosine to
 * min_frac at the last step. */
static float lr_multiplier(int step, int steps, int warmup, float min_frac) {
    if (step < warmup) return (float)(step + 1) / warmup;
    if (steps <= warmup + 1) return 1.0f;
    float progress = (float)(step - warmup) / (float)(steps - 1 - warmup);
    return min_frac + 0.5f * (1.0f - min_frac) * (1.0f + cosf(3.14159265f * progress));
}

/* Clips by the global norm over every optimizer and steps them all; returns the norm. */
static float optimizer_step(GPT2 *m, const Options *o, int step) {
    double sq = 0.0;
    for (int i = 0; i < m->num_handles; i++) {
        float s;
        grass_check(grass_optimizer_grad_sq_norm(m->handles[i].opt, m->handles[i].grad, &s, NULL),
                    "grass_optimizer_grad_sq_norm");
        sq += s;
    }
    const float norm = (float)sqrt(sq);
    /* A non-finite norm scales nothing: the steps skip a non-finite gradient themselves. */
    const float scale = (o->clip > 0.0f && isfinite(norm) && norm > o->clip) ? o->clip / norm
                                                                              : 1.0f;
    const float mult = lr_multiplier(step, o->steps, o->warmup, o->min_lr_frac);
    for (int i = 0; i < m->num_handles; i++) {
        Handle *h = &m->handles[i];
        const float lr = (h->sparse ? o->grass_lr : o->lr) * mult;
        if (h->sparse && o->residual_scale > 0.0f) {
            /* the rows the selection leaves out move by signSGD, from this step's X and dY */
            grass_check(grass_optimizer_step_residual(h->opt, h->w, (int64_t)m->B * m->T, h->x,
                                                      h->dy, lr, scale, o->residual_scale, NULL),
                        "grass_optimizer_step_residual");
        } else {
            grass_check(grass_optimizer_step_scaled(h->opt, h->w, h->grad, lr, scale, NULL),
                        "grass_optimizer_step_scaled");
        }
    }
    return norm;
}

static grass_optimizer **handle_list(const GPT2 *m) {
    grass_optimizer **list = xcalloc(m->num_handles, sizeof *list);
    for (int i = 0; i < m->num_handles; i++) list[i] = m->handles[i].opt;
    return list;
}

/* ---- data -------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *bytes;
    size_t train_len, val_len; /* train = bytes[0, train_len), val = the rest */
} Text;

static Text read_text(const char *path, float val_frac, int T) {
    FILE *f = fopen(path, "rb");
    if (!f) usage_error("cannot open the text file '%s': %s", path, strerror(errno));
    Text text = {0};
    size_t cap = 1 << 16, len = 0;
    text.bytes = xcalloc(cap, 1);
    for (size_t got; (got = fread(text.bytes + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) {
            unsigned char *bigger = realloc(text.bytes, cap *= 2);
            if (!bigger) {
                free(text.bytes);
                usage_error("'%s' does not fit in memory", path);
            }
            text.bytes = bigger;
        }
    }
    int failed = ferror(f);
    fclose(f);
    text.val_len = (size_t)((double)len * val_frac);
    text.train_len = len - text.val_len;
    if (failed || text.val_len < (size_t)T + 1 || text.train_len < (size_t)T + 1)
        free(text.bytes);
    if (failed) usage_error("cannot read the text file '%s'", path);
    if (text.val_len < (size_t)T + 1 || text.train_len < (size_t)T + 1)
        usage_error("'%s' has %zu bytes: too short for a train and a validation window of %d "
                    "bytes at --val-frac %g", path, len, T + 1, val_frac);
    return text;
}

/* The training batch of `step`: B windows at offsets drawn from (seed, step) alone, so a resumed
 * run sees what an uninterrupted one would have. */
static void train_batch(GPT2 *m, const Text *text, uint64_t seed, int step) {
    uint64_t rng = seed ^ (0x5851f42d4c957f2dull * (uint64_t)(step + 1));
    const size_t span = text->train_len - m->T; /* window starts in [0, span) */
    for (int b = 0; b < m->B; b++) {
        size_t start = (size_t)(splitmix64(&rng) % span);
        for (int t = 0; t < m->T; t++) {
            m->inputs[b * m->T + t] = text->bytes[start + t];
            m->targets[b * m->T + t] = text->bytes[start + t + 1];
        }
    }
}

/* Mean loss over `batches` x B windows spread evenly over the validation bytes. */
static float val_loss(GPT2 *m, const Text *text, int batches) {
    const unsigned char *val = text->bytes + text->train_len;
    const size_t windows = (size_t)batches * m->B, last = text->val_len - m->T - 1;
    double sum = 0.0;
    for (int k = 0; k < batches; k++) {
        for (int b = 0; b < m->B; b++) {
            size_t w = (size_t)k * m->B + b;
            size_t start = windows > 1 ? last * w / (windows - 1) : 0;
            for (int t = 0; t < m->T; t++) {
                m->inputs[b * m->T + t] = val[start + t];
                m->targets[b * m->T + t] = val[start + t + 1];
            }
        }
        sum += gpt2_forward(m);
    }
    return (float)(sum / batches);
}

/* ---- checkpoints: PREFIX.model (this format) and PREFIX.grass (grass_checkpoint_save) ---- */

static const char model_magic[8] = {'G', 'P', 'T', '2', 'G', 'R', 'S', '1'};

typedef struct {
    char magic[8];
    int32_t V, maxT, L, NH, C, grass_mode;
    int64_t step;
    uint64_t seed, num_params;
} ModelHeader;

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#define PATH_CHARS 4096
static void path_with(char path[PATH_CHARS], const char *prefix, const char *ext) {
    if (strlen(prefix) + strlen(ext) >= PATH_CHARS)
        usage_error("the checkpoint prefix '%.40s...' is too long", prefix);
    strcpy(path, prefix);
    strcat(path, ext);
}

static void save_checkpoint(GPT2 *m, const char *prefix, int grass_mode, int step, uint64_t seed) {
    char path[PATH_CHARS], tmp[PATH_CHARS];
    path_with(path, prefix, ".model");
    path_with(tmp, prefix, ".model.tmp");
    ModelHeader hd;
    memset(&hd, 0, sizeof hd);
    memcpy(hd.magic, model_magic, 8);
    hd.V = m->config.V, hd.maxT = m->config.maxT, hd.L = m->config.L;
    hd.NH = m->config.NH, hd.C = m->config.C, hd.grass_mode = grass_mode;
    hd.step = step, hd.seed = seed, hd.num_params = m->num_params;
    uint64_t sum = fnv1a(0xcbf29ce484222325ull, &hd, sizeof hd);
    sum = fnv1a(sum, m->params, m->num_params * sizeof(float));
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(&hd, sizeof hd, 1, f) != 1 ||
        fwrite(m->params, sizeof(float), m->num_params, f) != m->num_params ||
        fwrite(&sum, sizeof sum, 1, f) != 1 || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "%s: cannot write '%s': %s\n", prog, path, strerror(errno));
        exit(1);
    }
    path_with(path, prefix, ".grass");
    grass_optimizer **list = handle_list(m);
    grass_status status = grass_checkpoint_save(path, list, (size_t)m->num_handles, NULL);
    free(list);
    grass_check(status, "grass_checkpoint_save");
}

/* Restores weights and optimizers; returns the step to continue from. A refused file (damaged,
 * or of another model or optimizer) ends the run with exit 2 before any step or save. */
static int load_checkpoint(GPT2 *m, const char *prefix, int grass_mode, uint64_t seed) {
    char path[PATH_CHARS];
    path_with(path, prefix, ".model");
    FILE *f = fopen(path, "rb");
    if (!f) usage_error("--resume: cannot open '%s': %s", path, strerror(errno));
    ModelHeader hd;
    float *params = xcalloc(m->num_params, sizeof(float));
    uint64_t stored = 0;
    if (fread(&hd, sizeof hd, 1, f) != 1 || memcmp(hd.magic, model_magic, 8) != 0) {
        fclose(f);
        free(params);
        usage_error("--resume: '%s' is not a checkpoint of this trainer", path);
    }
    if (hd.V != m->config.V || hd.maxT != m->config.maxT || hd.L != m->config.L ||
        hd.NH != m->config.NH || hd.C != m->config.C) {
        fclose(f);
        free(params);
        usage_error("--resume: '%s' holds a model with V=%d T=%d L=%d H=%d C=%d, the flags ask "
                    "for V=%d T=%d L=%d H=%d C=%d", path, hd.V, hd.maxT, hd.L, hd.NH, hd.C,
                    m->config.V, m->config.maxT, m->config.L, m->config.NH, m->config.C);
    }
    int ok = hd.num_params == m->num_params &&
             fread(params, sizeof(float), m->num_params, f) == m->num_params &&
             fread(&stored, sizeof stored, 1, f) == 1 && fgetc(f) == EOF;
    fclose(f);
    uint64_t sum = fnv1a(0xcbf29ce484222325ull, &hd, sizeof hd);
    ok = ok && fnv1a(sum, params, m->num_params * sizeof(float)) == stored;
    if (ok) memcpy(m->params, params, m->num_params * sizeof(float)); /* a refused resume exits */
    free(params);
    if (!ok) usage_error("--resume: '%s' is truncated or damaged (its checksum fails)", path);
    if (hd.grass_mode != grass_mode)
        usage_error("--resume: '%s' was trained with --optimizer %s, this run has --optimizer %s",
                    path, hd.grass_mode ? "grass" : "adamw", grass_mode ? "grass" : "adamw");
    if (hd.seed != seed)
        usage_error("--resume: '%s' was trained with --seed %llu, this run has --seed %llu", path,
                    (unsigned long long)hd.seed, (unsigned long long)seed);
    path_with(path, prefix, ".grass");
    grass_optimizer **list = handle_list(m);
    grass_status status = grass_checkpoint_load(path, list, (size_t)m->num_handles, NULL);
    free(list);
    grass_check(status, "grass_checkpoint_load (--resume)");
    return (int)hd.step;
}

/* ---- --check-grad: the backward pass against central differences -------------------------- */

/* Every parameter random (LayerNorm weights around 1, biases around 0, never exactly), then for
 * each tensor a few elements: (L(w + e) - L(w - e)) / 2e against the backward's gradient, and
 * for each grass optimizer its accumulated gradient's squared norm against the same rows of the
 * full gradient dW. */
static int check_grad(Options *o) {
    Config c = {256, 8, 2, 2, 16};
    const int B = 2, T = 8;
    GPT2 full, proj;
    gpt2_build(&full, c, B, T, 0, o->seed);
    uint64_t rng = o->seed + 1;
    for (size_t i = 0; i < full.num_params; i++) full.params[i] = 0.3f * rand_normal(&rng);
    for (int p = P_LN1W; p <= P_LNFW; p++)
        if (p == P_LN1W || p == P_LN2W || p == P_LNFW)
            for (size_t i = 0; i < full.param_sizes[p]; i++) full.param[p][i] += 1.0f;
    for (int i = 0; i < B * T; i++) {
        full.inputs[i] = (int)(splitmix64(&rng) % c.V);
        full.targets[i] = (int)(splitmix64(&rng) % c.V);
    }
    gpt2_forward(&full);
    gpt2_backward(&full);

    /* Finite differences in double of a float model: the step e = 1e-2 keeps float rounding
     * (~1e-6 in the loss) small against the difference; the tolerance covers e^2 terms. */
    const float e = 1e-2f, atol = 2e-4f, rtol = 2e-2f;
    int failures = 0;
    double worst = 0.0;
    for (int p = 0; p < NUM_PARAMS; p++) {
        for (int k = 0; k < 8; k++) {
            size_t i = (size_t)(splitmix64(&rng) % full.param_sizes[p]);
            if (p == P_WTE) i = (size_t)full.inputs[k] * c.C + (size_t)(splitmix64(&rng) % c.C);
            float *w = full.param[p] + i, saved = *w;
            *w = saved + e;
            double up = gpt2_forward(&full);
            *w = saved - e;
            double down = gpt2_forward(&full);
            *w = saved;
            double numeric = (up - down) / (2.0 * e), analytic = full.grad[p][i];
            double err = fabs(numeric - analytic), allowed = atol + rtol * fabs(numeric);
            if (err / allowed > worst) worst = err / allowed;
            if (err > allowed) {
                failures++;
                fprintf(stderr, "check-grad: %s[%zu]: backward %.6g, finite difference %.6g\n",
                        param_names[p], i, analytic, numeric);
            }
        }
    }
    printf("check-grad: %d tensors x 8 elements against central differences (e=%g): worst "
           "error %.3f of the tolerance (%g + %g |numeric|)\n", NUM_PARAMS, e, worst, atol, rtol);

    /* The grass path: the same batch through the sparse optimizers. */
    grass_context *ctx;
    grass_check(grass_context_create_cpu(&ctx), "grass_context_create_cpu");
    gpt2_build(&proj, c, B, T, 1, o->seed);
    memcpy(proj.params, full.params, full.num_params * sizeof(float));
    memcpy(proj.inputs, full.inputs, (size_t)B * T * sizeof(int));
    memcpy(proj.targets, full.targets, (size_t)B * T * sizeof(int));
    Options po = *o;
    po.rank = 8;
    make_optimizers(&proj, &po, ctx, 1);
    gpt2_forward(&proj);
    gpt2_backward(&proj);
    double worst_norm = 0.0;
    for (int h = 0; h < proj.num_handles; h++) {
        Handle *hd = &proj.handles[h];
        float got;
        grass_check(grass_optimizer_grad_sq_norm(hd->opt, hd->grad, &got, NULL),
                    "grass_optimizer_grad_sq_norm");
        double want = 0.0;
        if (hd->sparse) {
            /* selected rows (or columns) of the full dW, times their scales */
            grass_projection *pr;
            grass_projection_info info = {.struct_size = sizeof info};
            const int32_t *idx;
            const float *scale;
            grass_check(grass_optimizer_projection(hd->opt, &pr), "grass_optimizer_projection");
            grass_check(grass_projection_get_info(pr, &info), "grass_projection_get_info");
            grass_check(grass_projection_selection(pr, &idx, &scale),
                        "grass_projection_selection");
            const float *g = NULL;
            for (int p = 0; p < NUM_PARAMS; p++)
                if (hd->w >= proj.param[p] && hd->w < proj.param[p] + proj.param_sizes[p])
                    g = full.grad[p] + (hd->w - proj.param[p]);
            for (int64_t j = 0; j < info.rank; j++)
                for (int64_t q = 0; q < info.k; q++) {
                    double v = info.side == GRASS_SIDE_ROWS ? g[idx[j] * info.n + q]
                                                            : g[q * info.n + idx[j]];
                    v *= scale[j];
                    want += v * v;
                }
        } else {
            for (size_t i = 0; i < hd->numel; i++) want += (double)hd->grad[i] * hd->grad[i];
        }
        double rel = fabs(got - want) / (want > 0 ? want : 1.0);
        if (rel > worst_norm) worst_norm = rel;
        if (rel > 1e-5) {
            failures++;
            fprintf(stderr, "check-grad: %s: grass_optimizer_grad_sq_norm %.8g, from the full "
                    "gradient %.8g\n", hd->name, got, want);
        }
    }
    printf("check-grad: %d optimizers' grad_sq_norm against the full gradient's selected rows: "
           "worst relative error %.2e (tolerance 1e-5)\n", proj.num_handles, worst_norm);
    gpt2_free(&proj);
    grass_context_destroy(ctx);
    gpt2_free(&full);
    printf("check-grad: %s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}

/* ---- command line ------------------------------------------------------------------------ */

static void print_help(void) {
    printf(
        "usage: %s TEXT_FILE [options]     train on the bytes of TEXT_FILE\n"
        "       %s --check-grad            check the backward pass and exit\n"
        "model:\n"
        "  --layers L (4)  --channels C (128)  --heads H (4)  --seq-len T (64)\n"
        "training:\n"
        "  --optimizer grass|adamw (grass)   grass: qkv/attn-proj/fc/mlp-proj through grass's\n"
        "                                    sparse optimizers; adamw: everything dense AdamW\n"
        "  --steps N (1000)        --batch B (8)         --seed S (1)\n"
        "  --lr X (1e-3)           dense AdamW learning rate (every parameter with adamw)\n"
        "  --grass-lr X (2e-2)     learning rate of the grass-projected matrices\n"
        "                          (both the best of a sweep: examples/README.md)\n"
        "  --warmup N (steps/20)   --min-lr-frac F (0.1)  cosine from lr to F*lr\n"
        "  --weight-decay X (0.1)  on matrices and embeddings   --clip X (1.0, 0 = off)\n"
        "  --rank R (0: grass_default_rank of each layer)   --refresh-every K (0: grass's)\n"
        "  --residual              the full-rank residual: the rows grass does not select move\n"
        "                          by signSGD each step (one more dW GEMM per matrix)\n"
        "  --residual-scale X      its step, relative to grass-lr x alpha (the library's, 0.1)\n"
        "  --row-warmup N          a grass row's step ramps by min(1, t/N) after a refresh\n"
        "                          zeroed its moments (the library's default: 10; 0: off)\n"
        "evaluation and checkpoints:\n"
        "  --val-every N (100)     --val-batches N (8)   --val-frac F (0.1, the file's tail)\n"
        "  --save PREFIX           write PREFIX.model and PREFIX.grass at the end\n"
        "  --stop-at N             end after step N (the schedule still runs to --steps)\n"
        "  --resume PREFIX         continue from PREFIX.model and PREFIX.grass\n",
        prog, prog);
}

static long parse_int(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        usage_error("%s: expected an integer in [%ld, %ld], got '%s'", flag, lo, hi, s);
    return v;
}

static float parse_float(const char *flag, const char *s, float lo, float hi) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        usage_error("%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, s);
    return v;
}

static Options parse_args(int argc, char **argv) {
    Options o = {0};
    o.optimizer = "grass";
    o.steps = 1000, o.B = 8, o.T = 64, o.val_every = 100, o.val_batches = 8, o.warmup = -1;
    o.lr = 1e-3f, o.grass_lr = 2e-2f, o.min_lr_frac = 0.1f, o.weight_decay = 0.1f;
    o.clip = 1.0f, o.val_frac = 0.1f, o.rank = 0, o.refresh_every = 0, o.seed = 1;
    o.row_warmup = -1;
    o.config = (Config){256, 64, 4, 4, 128};
    int residual = 0, scale_given = 0;
    float residual_scale = grass_default_residual_scale();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_help();
            exit(0);
        }
        if (!strcmp(a, "--check-grad")) {
            o.check_grad = 1;
            continue;
        }
        if (!strcmp(a, "--residual")) {
            residual = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (o.data_path) usage_error("one text file only, got '%s' and '%s'", o.data_path, a);
            o.data_path = a;
            continue;
        }
        if (i + 1 >= argc) usage_error("%s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--layers")) o.config.L = (int)parse_int(a, v, 1, 64);
        else if (!strcmp(a, "--channels")) o.config.C = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--heads")) o.config.NH = (int)parse_int(a, v, 1, 256);
        else if (!strcmp(a, "--seq-len")) o.T = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--batch")) o.B = (int)parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--steps")) o.steps = (int)parse_int(a, v, 1, 100000000);
        else if (!strcmp(a, "--stop-at")) o.stop_at = (int)parse_int(a, v, 1, 100000000);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)parse_int(a, v, 0, 0x7fffffffL);
        else if (!strcmp(a, "--lr")) o.lr = parse_float(a, v, 0.0f, 10.0f);
        else if (!strcmp(a, "--grass-lr")) o.grass_lr = parse_float(a, v, 0.0f, 10.0f);
        else if (!strcmp(a, "--warmup")) o.warmup = (int)parse_int(a, v, 0, 100000000);
        else if (!strcmp(a, "--min-lr-frac")) o.min_lr_frac = parse_float(a, v, 0.0f, 1.0f);
        else if (!strcmp(a, "--weight-decay")) o.weight_decay = parse_float(a, v, 0.0f, 10.0f);
        else if (!strcmp(a, "--clip")) o.clip = parse_float(a, v, 0.0f, 1e30f);
        else if (!strcmp(a, "--residual-scale")) {
            residual_scale = parse_float(a, v, 0.0f, 1e30f);
            scale_given = 1;
        }
        else if (!strcmp(a, "--rank")) o.rank = parse_int(a, v, 0, 0x7fffffffL);
        else if (!strcmp(a, "--row-warmup")) o.row_warmup = (int)parse_int(a, v, 0, 0x7fffffffL);
        else if (!strcmp(a, "--refresh-every")) o.refresh_every = parse_int(a, v, 0, 0x7fffffffL);
        else if (!strcmp(a, "--val-every")) o.val_every = (int)parse_int(a, v, 1, 100000000);
        else if (!strcmp(a, "--val-batches")) o.val_batches = (int)parse_int(a, v, 1, 100000);
        else if (!strcmp(a, "--val-frac")) o.val_frac = parse_float(a, v, 0.001f, 0.999f);
        else if (!strcmp(a, "--optimizer")) {
            if (strcmp(v, "grass") && strcmp(v, "adamw"))
                usage_error("--optimizer: expected grass or adamw, got '%s'", v);
            o.optimizer = v;
        } else if (!strcmp(a, "--save")) o.save = v;
        else if (!strcmp(a, "--resume")) o.resume = v;
        else usage_error("unknown option '%s'", a);
    }
    if (scale_given && !residual) usage_error("--residual-scale: add --residual to use it");
    if (residual && strcmp(o.optimizer, "grass"))
        usage_error("--residual: the full-rank residual is grass's (--optimizer grass)");
    o.residual_scale = residual ? residual_scale : 0.0f;
    if (o.check_grad) return o;
    if (!o.data_path) usage_error("no text file given");
    if (o.config.C % o.config.NH)
        usage_error("--channels %d is not a multiple of --heads %d", o.config.C, o.config.NH);
    o.config.maxT = o.T;
    if (o.warmup < 0) o.warmup = o.steps / 20;
    if (o.warmup >= o.steps)
        usage_error("--warmup %d must be below --steps %d", o.warmup, o.steps);
    if (o.stop_at > o.steps)
        usage_error("--stop-at %d is past --steps %d", o.stop_at, o.steps);
    return o;
}

int main(int argc, char **argv) {
    Options o = parse_args(argc, argv);
    if (o.check_grad) return check_grad(&o);
    const int grass_mode = !strcmp(o.optimizer, "grass");
    Text text = read_text(o.data_path, o.val_frac, o.T);

    grass_context *ctx;
    grass_check(grass_context_create_cpu(&ctx), "grass_context_create_cpu");
    GPT2 model;
    gpt2_build(&model, o.config, o.B, o.T, grass_mode, o.seed);
    make_optimizers(&model, &o, ctx, grass_mode);
    int start = 0;
    if (o.resume) start = load_checkpoint(&model, o.resume, grass_mode, o.seed);
    if (start >= (o.stop_at ? o.stop_at : o.steps))
        usage_error("--resume: '%s' is at step %d, nothing left to do before step %d", o.resume,
                    start, o.stop_at ? o.stop_at : o.steps);

    size_t state_bytes = 0, grass_params = 0;
    int64_t handle_bytes = 0;
    for (int i = 0; i < model.num_handles; i++) {
        size_t bytes;
        grass_optimizer_info info = {.struct_size = sizeof info};
        grass_check(grass_optimizer_state_size(model.handles[i].opt, &bytes),
                    "grass_optimizer_state_size");
        grass_check(grass_optimizer_get_info(model.handles[i].opt, &info),
                    "grass_optimizer_get_info");
        state_bytes += bytes;
        handle_bytes += info.memory_bytes;
        if (model.handles[i].sparse) grass_params += model.handles[i].numel;
    }
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("model: L=%d C=%d H=%d T=%d vocab=%d, %zu parameters (LM head tied to wte)\n",
           o.config.L, o.config.C, o.config.NH, o.T, o.config.V, model.num_params);
    printf("data: %s, %zu train and %zu validation bytes\n", o.data_path, text.train_len,
           text.val_len);
    printf("optimizer: %s, %d handles (%zu parameters through grass projections), lr %g, "
           "grass-lr %g, warmup %d, weight decay %g, clip %g, batch %d, %d threads\n",
           o.optimizer, model.num_handles, grass_params, o.lr, o.grass_lr, o.warmup,
           o.weight_decay, o.clip, o.B, threads);
    if (o.residual_scale > 0.0f)
        printf("full-rank residual: the rows grass leaves out move by signSGD, scale %g\n",
               o.residual_scale);
    if (o.row_warmup > 0)
        printf("row warm-up: a grass row's step ramps over %d steps after a refresh\n",
               o.row_warmup);
    printf("optimizer state: %zu bytes (grass_optimizer_state_size summed), handles hold %lld "
           "bytes\n", state_bytes, (long long)handle_bytes);
    if (grass_mode) { /* what the library made of layer 0's matrices (the others are alike) */
        static const char *matrix_names[4] = {"qkvw", "attprojw", "fcw", "fcprojw"};
        printf("grass layers:");
        for (int k = 0; k < 4; k++) {
            grass_projection *pr;
            grass_projection_info info = {.struct_size = sizeof info};
            grass_check(grass_optimizer_projection(model.layer_opt[0][k], &pr),
                        "grass_optimizer_projection");
            grass_check(grass_projection_get_info(pr, &info), "grass_projection_get_info");
            printf(" %s %lldx%lld r=%lld of %s %lld%s", matrix_names[k],
                   (long long)info.m, (long long)info.n, (long long)info.rank,
                   info.side == GRASS_SIDE_ROWS ? "rows" : "cols", (long long)info.d,
                   k < 3 ? "," : "\n");
        }
    }
    if (start) printf("resumed from %s at step %d\n", o.resume, start);

    const int end = o.stop_at ? o.stop_at : o.steps;
    double total_ms = 0.0;
    int timed = 0;
    float last_val = NAN;
    for (int step = start; step < end; step++) {
        train_batch(&model, &text, o.seed, step);
        double t0 = now_ms();
        float loss = gpt2_forward(&model);
        gpt2_backward(&model);
        float norm = optimizer_step(&model, &o, step);
        double ms = now_ms() - t0;
        if (!isfinite(loss)) {
            fprintf(stderr, "%s: the loss is %g at step %d; try a smaller learning rate\n", prog,
                    loss, step + 1);
            return 1;
        }
        if (step > start) total_ms += ms, timed++; /* the first step warms up */
        const int last = step + 1 == end;
        if ((step + 1) % o.val_every == 0 || last) {
            last_val = val_loss(&model, &text, o.val_batches);
            printf("step %5d  train %.4f  val %.4f  norm %.3f  lr x%.3f  %.1f ms\n", step + 1,
                   loss, last_val, norm, lr_multiplier(step, o.steps, o.warmup, o.min_lr_frac),
                   ms);
        } else if ((step + 1) % 10 == 0 || step == start) {
            printf("step %5d  train %.4f  norm %.3f  %.1f ms\n", step + 1, loss, norm, ms);
        }
        fflush(stdout);
    }
    printf("done: %s, step %d, val loss %.4f, %.1f ms/step, optimizer state %zu bytes\n",
           o.optimizer, end, last_val, timed ? total_ms / timed : 0.0, state_bytes);
    if (o.save) {
        save_checkpoint(&model, o.save, grass_mode, end, o.seed);
        printf("saved %s.model and %s.grass\n", o.save, o.save);
    }
    gpt2_free(&model);
    grass_context_destroy(ctx);
    free(text.bytes);
    return 0;
}
