/* Float64 sums over float32 rows for an NL block's statistics (nlanalysis/kernels/sums.py): the JSD of
 * sampled row pairs and the sum of unit vectors behind the mean pairwise cosine distance. Included at
 * the end of row_stats.c (one library; it supplies the headers and macros used here).
 */
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

/* 1 when none of the n floats at x is NaN or inf, else 0. The exponent bits are tested as integers
 * (-ffast-math may fold isfinite to 1); one thread below 1 M floats, where a second one costs more to
 * wake than it saves (a ViT layer's attention output at batch 1 is ~0.1 M). */
int nl_all_finite(const float *x, int64_t n) {
    const uint32_t *u = (const uint32_t *)x;
    int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (n >= (1 << 20))
    for (int64_t i = 0; i < n; ++i) bad += (u[i] & 0x7f800000u) == 0x7f800000u;
    return bad == 0;
}
