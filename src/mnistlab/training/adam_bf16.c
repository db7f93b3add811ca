/* One fused Adam (or AdamW) step over fp32 master weights trained from bf16 copies.
 *
 * For each tensor, in one pass over memory: read the bf16 gradient, update the fp32 weight and Adam's two
 * fp32 moments, and write the new weight's bf16 copy (round to nearest even, as Tensor.to(torch.bfloat16)).
 * The arithmetic is that of PyTorch's fused CPU Adam on fp32 tensors (aten/src/ATen/native/cpu/
 * FusedAdamKernel.cpp, vector path): the bias corrections in double, the rest in float, the first moment as
 * lerp with one fused multiply-add, the second with one, the update divided, not multiplied by a
 * reciprocal. Built with -ffp-contract=off, so that only the fmaf calls below fuse.
 *
 * Each tensor's `step` (Adam's per-parameter step count, a float as torch keeps it) is incremented by
 * mnistlab_adam_bf16_begin; mnistlab_adam_bf16_work then runs on every thread of the caller's OpenMP pool
 * (torch's own, so no second set of threads competes with it for the cores), or on the caller alone.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    float *param, *exp_avg, *exp_avg_sq, *step;
    const uint16_t *grad; /* bf16 */
    uint16_t *copy;       /* bf16, written */
    int64_t numel;
} Tensor;

typedef struct {
    const Tensor *tensors;
    int count, parts, decoupled;
    double lr, beta1, beta2, eps, weight_decay;
    int (*thread_num)(void), (*num_threads)(void); /* the pool's omp_get_thread_num/num_threads, or NULL */
} Step;

static inline float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void update(const Tensor *t, int64_t lo, int64_t hi, const Step *w) {
    double step = (double)*t->step;
    double bias_correction1 = 1 - pow(w->beta1, step), bias_correction2 = 1 - pow(w->beta2, step);
    const float neg_step_size = (float)(-(w->lr / bias_correction1));
    const float bc2_sqrt = (float)sqrt(bias_correction2), eps = (float)w->eps;
    const float beta2 = (float)w->beta2, c2 = (float)(1 - w->beta2), c1 = (float)(1 - w->beta1);
    /* Adam adds wd * weight to the gradient, AdamW scales the weight by 1 - lr * wd: one of the two is a
     * no-op here (fmaf(p, 0, g) == g, p * 1 == p), which keeps the loop free of branches to vectorise. */
    const int decoupled = w->decoupled && w->weight_decay != 0;
    const float wd = decoupled ? 0.0f : (float)w->weight_decay;
    const float decay = decoupled ? (float)(1 - w->lr * w->weight_decay) : 1.0f;
    /* lerp(m, g, c1): m + c1 (g - m) for a small weight, else g + (c1 - 1)(g - m), as torch's lerp */
    const int small = fabsf(c1) < 0.5f;
    const float coeff = small ? c1 : c1 - 1.0f;
    float *restrict p = t->param, *restrict m = t->exp_avg, *restrict v = t->exp_avg_sq;
    const uint16_t *restrict g16 = t->grad;
    uint16_t *restrict copy = t->copy;
    for (int64_t i = lo; i < hi; i++) {
        float pi = p[i] * decay, g = fmaf(p[i], wd, from_bf16(g16[i]));
        float mi = fmaf(coeff, g - m[i], small ? m[i] : g);
        float vi = fmaf(c2 * g, g, v[i] * beta2);
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        pi = pi + (neg_step_size * mi) / denom;
        p[i] = pi;
        copy[i] = to_bf16(pi);
    }
}

/* Before the threads start: count the step (each tensor's Adam step count). */
void mnistlab_adam_bf16_begin(Step *s) {
    for (int k = 0; k < s->count; k++) *s->tensors[k].step += 1.0f;
}

/* Run by every thread of a team (an OpenMP parallel region of torch's pool), or by the caller alone: part i
 * is the i-th 16-element-aligned share of every tensor, and thread t of n takes parts t, t + n, ...: the same
 * thread takes the same share every step, as torch's kernels do, so a share stays in the cache of the core
 * that last wrote it (handing parts out as threads come free measured 4-15% slower a step where the two
 * cores do not share a last-level cache). */
void mnistlab_adam_bf16_work(void *arg) {
    const Step *s = arg;
    int t = s->thread_num ? s->thread_num() : 0, n = s->num_threads ? s->num_threads() : 1;
    for (int part = t; part < s->parts; part += n) {
        for (int k = 0; k < s->count; k++) {
            const Tensor *x = &s->tensors[k];
            int64_t share = ((x->numel + s->parts - 1) / s->parts + 15) / 16 * 16;
            int64_t lo = share * part, hi = lo + share < x->numel ? lo + share : x->numel;
            if (lo < hi) update(x, lo, hi, s);
        }
    }
}
