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

int nl_row_stats_version(void) { return 3; }

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

/* Zeros never reach logf: glibc's vector logf hands lanes holding 0 (or other special values) to
 * its scalar fallback, which made the JSD 5x slower on real maps (masked keys, flushed weights are
 * exact zeros). x log(max(x, 1e-37)) is 0 at x = 0 and x log x for every normal x >= 1e-37; smaller
 * weights (below 1.2e-38 they are flushed anyway) contribute under 1e-35. */

/* One row's share of the sums (ts[0], ts[stride], ... : entropy, largest weight / mass, non-zero,
 * zero, prefix mass) and of the sum of unit rows (acc += r / ||r||). The norm is taken of r / pk
 * (entries <= 1, the largest exactly 1): squares of weights below ~1e-19 would underflow otherwise. */
static inline void add_row(double *ts, int64_t stride, double *acc, const float *r, int64_t K, int valid, int ok,
                           double ent, float pk, float t, double pre, const int32_t *kl, int32_t li, float qs) {
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
        const float ip = 1.f / pk;
        float n2 = 0.f;
        for (int64_t j = 0; j < K; ++j) {
            const float v = r[j] * ip;
            n2 += v * v;
        }
        const float u = ip / sqrtf(n2);
        for (int64_t j = 0; j < K; ++j) acc[j] += (double)(u * r[j]); /* summed in double: many rows */
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
                 float *table, float *table_ent, uint8_t *table_ok, float *probs) {
    const int64_t K = N - first, H1 = H + (with_mean ? 1 : 0), R = n_pre + nq;
    int failed = 0;
    memset(s, 0, sizeof(double) * B * H1 * K);
    memset(sums, 0, sizeof(double) * 8 * B * H1);
#pragma omp parallel
    {
        FAST_DENORMALS
        double *acc = calloc((size_t)(B * H1 * K), sizeof(double)); /* this thread's share of s */
        double *tsum = calloc((size_t)(8 * B * H1), sizeof(double));
        float *buf = malloc(sizeof(float) * (size_t)((H + 1) * N)); /* one query: every head's row, then the mean */
        float *ones = malloc(sizeof(float) * (size_t)(K > 0 ? K : 1)); /* key weights when km is NULL */
        if (ones)
            for (int64_t j = 0; j < K; ++j) ones[j] = 1.f;
        if (!acc || !tsum || !buf || !ones) {
#pragma omp atomic write
            failed = 1;
        }
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
            float *mean = buf + H * N + first; /* K entries */
            double tot[H1 > 0 ? H1 : 1], ent[H1 > 0 ? H1 : 1], pre[H1 > 0 ? H1 : 1];
            for (int64_t j = 0; j < K; ++j) mean[j] = 0.f;
            double pre_mean = 0.0;
            for (int64_t h = 0; h < H; ++h) {
                const float *l = logits + (b * H + h) * lbh + row_i * N;
                float *p = buf + h * N;
                float mx = l[0];
                for (int64_t j = 1; j < N; ++j) mx = l[j] > mx ? l[j] : mx;
                /* e_j = exp(x_j), x_j = (l_j - max) scale; rdw = sum_j e_j w_j x_j over the keys (for the entropy) */
                float z = 0.f, rdw = 0.f;
                for (int64_t j = 0; j < first; ++j) {
                    p[j] = exp_nonpositive((l[j] - mx) * scale);
                    z += p[j];
                }
                float *r = p + first;
                const float *d = l + first;
                for (int64_t j = 0; j < K; ++j) {
                    const float x = (d[j] - mx) * scale, e = exp_nonpositive(x);
                    r[j] = e;
                    z += e;
                    rdw += e * w[j] * x;
                }
                const float iz = 1.f / z, logz = logf(z), rd = rdw * iz;
                float pr = 0.f;
                for (int64_t j = 0; j < prefix; ++j) pr += p[j];
                if (probs) { /* the plain softmax, for the model: l is not read again, so probs may be logits */
                    float *out = probs + (b * H + h) * lbh + row_i * N;
                    for (int64_t j = 0; j < N; ++j) out[j] = p[j] * iz;
                }
                float t = 0.f, pk = 0.f;
                for (int64_t j = 0; j < K; ++j) {
                    const float v = r[j] * iz * w[j];
                    r[j] = v;
                    t += v;
                    pk = v > pk ? v : pk;
                    mean[j] += v;
                }
                pre[h] = pr * iz;
                pre_mean += pre[h];
                tot[h] = t;
                const int ok = valid && pk > 0.f;
                /* entropy of r / t: log t - sum r log p / t, with log p = (l - max) - log Z */
                ent[h] = ok ? log((double)t) - ((double)rd - (double)t * logz) / t : 0.0;
                add_row(tsum + b * H1 + h, B * H1, acc + (b * H1 + h) * K, r, K, valid, ok, ent[h], pk, t, pre[h], kl, li, qs);
            }
            if (with_mean) { /* the head mean: mean_h of the masked rows */
                const float ih = 1.f / (float)H;
                float t = 0.f, rl = 0.f, pk = 0.f;
                for (int64_t j = 0; j < K; ++j) {
                    const float v = mean[j] * ih;
                    mean[j] = v;
                    t += v;
                    rl += v * logf(fmaxf(v, 1e-37f)); /* v is 0 or a normal float (denormals are flushed) */
                    pk = v > pk ? v : pk;
                }
                tot[H] = t;
                const int ok = valid && pk > 0.f;
                ent[H] = ok ? log((double)t) - (double)rl / t : 0.0;
                add_row(tsum + b * H1 + H, B * H1, acc + (b * H1 + H) * K, mean, K, valid, ok, ent[H], pk, t, pre_mean / H, kl, li, qs);
            }
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
            }
        }
        free(acc);
        free(tsum);
        free(buf);
        free(ones);
        RESTORE_DENORMALS
    }
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

/* Jensen-Shannon divergence (bits) of row pairs of a table of renormalised rows (reference:
 * nlanalysis.vit.measure._pair_jsd): H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2, clamped to [0, 1].
 *   table [S, H1, K], ent [S, H1] (nats), ok [S, H1]; a, b [P] rows of each pair
 *   out [P, H1], out_ok [P, H1] (0 where either row is all zero) */
int nl_pair_jsd(const float *table, const float *ent, const uint8_t *ok, const int64_t *a, const int64_t *b, int64_t P,
                int64_t H1, int64_t K, float *out, uint8_t *out_ok) {
    const double ln2 = 0.69314718055994530942;
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
            hm -= m * logf(fmaxf(m, 1e-37f)); /* 0 log 0 = 0, and no zero reaches logf (see above) */
        }
        double js = ((double)hm - 0.5 * ((double)ent[ra] + (double)ent[rb])) / ln2;
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

/* Jensen-Shannon divergence (bits) of pairs of float32 rows, each renormalised in double (reference:
 * nlanalysis.metrics.divergence._jsd_normalized with base 2): H(m) - (H(p) + H(q)) / 2, m = (p + q) / 2,
 * 0 log 0 = 0, clamped to [0, 1]. Branch-free, so the logs vectorise (glibc's libmvec): the entropy
 * form loses at most ~1e-14 bits to cancellation against the reference's log1p form. One pass per pair,
 * no temporaries, pairs balanced over the threads in blocks (a busy core holds back only its block).
 *   rows [S, K] with `ld` floats from one row to the next; a, b [P] rows of each pair
 *   out [P] double, out_ok [P] (0 where either row sums to 0: the JSD is undefined) */
static inline double row_sum(const float *u, int64_t K) {
    double t = 0.0;
    for (int64_t j = 0; j < K; ++j) t += u[j];
    return t;
}

int nl_table_jsd64(const float *rows, int64_t ld, const int64_t *a, const int64_t *b, int64_t P, int64_t K, double *out,
                   uint8_t *out_ok) {
    const double ln2 = 0.69314718055994530942, tiny = 1e-300;
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t p = 0; p < P; ++p) {
        const float *u = rows + a[p] * ld, *v = rows + b[p] * ld;
        const double su = row_sum(u, K), sv = row_sum(v, K);
        if (!(su > 0.0) || !(sv > 0.0)) {
            out[p] = 0.0;
            out_ok[p] = 0;
            continue;
        }
        const double iu = 1.0 / su, iv = 1.0 / sv;
        double hm = 0.0, hp = 0.0, hq = 0.0;
        for (int64_t j = 0; j < K; ++j) {
            const double pn = u[j] * iu, qn = v[j] * iv, m = 0.5 * (pn + qn);
            hp -= pn * log(fmax(pn, tiny));
            hq -= qn * log(fmax(qn, tiny));
            hm -= m * log(fmax(m, tiny));
        }
        const double js = (hm - 0.5 * (hp + hq)) / ln2;
        out[p] = js < 0.0 ? 0.0 : (js > 1.0 ? 1.0 : js);
        out_ok[p] = 1;
    }
    return 0;
}

/* NaN or inf, by the bits (-ffast-math lets the compiler assume isfinite() is always true). */
static inline int not_finite(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return (bits & 0x7f800000u) == 0x7f800000u;
}

/* The sum of the used rows of v as unit vectors, for the mean pairwise cosine distance (reference:
 * nlanalysis.metrics.cosine.CosineAccumulator: float64 norms, all-zero rows left out and counted).
 *   v [B, n, D] float32, strides (sb, sn, sd) in floats, either sd == 1 (rows contiguous) or sn == 1
 *       (columns contiguous: a [B, C, H*W] feature map seen as [B, H*W, C]) -- read in place
 *   used [B, n] 1 for rows to use, or NULL (all); unused rows are never read
 *   s [B, D] out; zero [B] out: used all-zero rows; bad [B] out: used rows holding NaN or inf
 *   w [B, n] scratch (double): squared norms, then weights 1/||v_i|| (0: unused, zero or bad)
 *   part [T, B, D] scratch (double) for T = omp_get_max_threads() (rows contiguous only)
 * Two passes over v (norms, then the weighted sum), each one parallel region, every memory access
 * along the contiguous axis; additions in an order fixed by the thread count. Returns -1 if T is short. */
#if defined(_OPENMP)
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define UNIT_BLOCK 64 /* rows per block of the column-contiguous norm pass */

static void unit_norms_rows(const float *v, int64_t B, int64_t n, int64_t D, int64_t sb, int64_t sn, const uint8_t *used, double *w) {
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < B * n; ++task) {
        const int64_t b = task / n, i = task % n;
        if (used && !used[task]) {
            w[task] = -2.0;
            continue;
        }
        const float *r = v + b * sb + i * sn;
        double t = 0.0;
        int nonfinite = 0;
        for (int64_t d = 0; d < D; ++d) {
            nonfinite |= not_finite(r[d]);
            t += (double)r[d] * (double)r[d];
        }
        w[task] = nonfinite ? -1.0 : t;
    }
}

static void unit_norms_columns(const float *v, int64_t B, int64_t n, int64_t D, int64_t sb, int64_t sd, const uint8_t *used, double *w) {
    const int64_t blocks = (n + UNIT_BLOCK - 1) / UNIT_BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < B * blocks; ++task) {
        const int64_t b = task / blocks, i0 = (task % blocks) * UNIT_BLOCK, i1 = i0 + UNIT_BLOCK < n ? i0 + UNIT_BLOCK : n;
        double t[UNIT_BLOCK] = {0.0};
        int nonfinite[UNIT_BLOCK] = {0};
        for (int64_t d = 0; d < D; ++d) {
            const float *c = v + b * sb + d * sd;
            for (int64_t i = i0; i < i1; ++i) {
                nonfinite[i - i0] |= not_finite(c[i]);
                t[i - i0] += (double)c[i] * (double)c[i];
            }
        }
        for (int64_t i = i0; i < i1; ++i)
            w[b * n + i] = (used && !used[b * n + i]) ? -2.0 : (nonfinite[i - i0] ? -1.0 : t[i - i0]);
    }
}

int nl_unit_sum(const float *v, int64_t B, int64_t n, int64_t D, int64_t sb, int64_t sn, int64_t sd, const uint8_t *used,
                double *s, int64_t *zero, int64_t *bad, double *w, double *part, int64_t T) {
    if (sd == 1)
        unit_norms_rows(v, B, n, D, sb, sn, used, w);
    else
        unit_norms_columns(v, B, n, D, sb, sd, used, w);
    for (int64_t b = 0; b < B; ++b) { /* counts, then squared norms -> weights */
        int64_t z = 0, nb = 0;
        for (int64_t i = 0; i < n; ++i) {
            double *x = w + b * n + i;
            z += *x == 0.0;
            nb += *x == -1.0;
            *x = *x > 0.0 ? 1.0 / sqrt(*x) : 0.0;
        }
        zero[b] = z;
        bad[b] = nb;
    }
    if (sd != 1) { /* columns contiguous: s[b, d] = sum_i v[b, i, d] w[b, i], one (b, d) per task */
#pragma omp parallel for schedule(static)
        for (int64_t task = 0; task < B * D; ++task) {
            const int64_t b = task / D, d = task % D;
            const float *c = v + b * sb + d * sd;
            const double *wb = w + b * n;
            double t = 0.0;
            for (int64_t i = 0; i < n; ++i) t += wb[i] * (double)c[i];
            s[task] = t;
        }
        return 0;
    }
    int short_of_threads = 0;
    memset(part, 0, sizeof(double) * T * B * D);
#pragma omp parallel
    { /* rows contiguous: each thread sums its static share of the rows, then the shares in thread order */
        const int64_t me = omp_get_thread_num(), nt = omp_get_num_threads();
        if (nt > T) {
#pragma omp atomic write
            short_of_threads = 1;
        } else {
            const int64_t per = (B * n + nt - 1) / nt, lo = me * per, hi = lo + per < B * n ? lo + per : B * n;
            for (int64_t task = lo; task < hi; ++task) {
                const double wi = w[task];
                if (wi == 0.0) continue;
                const int64_t b = task / n, i = task % n;
                const float *r = v + b * sb + i * sn;
                double *acc = part + (me * B + b) * D;
                for (int64_t d = 0; d < D; ++d) acc[d] += wi * (double)r[d];
            }
        }
    }
    if (short_of_threads) return -1;
    memset(s, 0, sizeof(double) * B * D);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < B * D; ++j) s[j] += part[t * B * D + j];
    return 0;
}
