/* The last step of a ViT layer's statistics (nlanalysis/kernels/finalise.py): every [B, M] field of its
 * SiteStats from the token sums, the row sums and the JSD moments, in one call. The reference is
 * nlanalysis.measure.heads._head_stats's PyTorch path (distance_from_sum, row_results, _jsd); tests check
 * the two agree. Included at the end of row_stats.c (one library; it supplies the headers).
 *
 * Layout (C order, contiguous; M = H + 1 maps, the last the head mean):
 *   s2      [B, T] double   ||sum of unit vectors||^2 of input, branch and (T = 2 + H) each head's output
 *   zeros   [B, T] int64    their all-zero vectors
 *   s_att   [B, M, K]       sum of the valid non-zero rows as unit vectors (its squared norm is taken here)
 *   sums    [8, B, M]       entropy, max, non-zero rows, zero rows, prefix mass, own-object mass, share, count
 *   n_query, log_k [B]      valid queries (as double) and log max(n_key, 2)
 *   j_count, j_mean, j_var [B, M] the JSD's per-image moments, or all NULL (no JSD); exact [B] (with them)
 *   out     [11, B, M]      input, output, att, att_jsd, att_jsd_stderr, att_entropy, att_max,
 *                           att_zero_rows, att_own_object, own_object_share, att_prefix_mass
 *   out_zero [2, B, M]      input_zero, output_zero
 *
 * Compiled with -ffast-math: an undefined value is written as NaN's bit pattern (fin_nan), decided by
 * tests on the inputs only (counts), never by testing a computed value for NaN.
 */
static inline void fin_nan(double *dst) {
    const uint64_t bits = 0x7ff8000000000000ULL;
    memcpy(dst, &bits, sizeof bits);
}

/* What a double is, from its bits (-ffast-math may fold isnan/isinf away): 0 finite, 1 NaN, 2 +inf, 3 -inf. */
static inline int fin_kind(double x) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7ff0000000000000ULL) != 0x7ff0000000000000ULL) return 0;
    return (bits & 0x000fffffffffffffULL) ? 1 : (bits >> 63 ? 3 : 2);
}

/* distance_from_sum with include_self: 1 - s2 / n^2 clamped to [0, 2] (halved for "(1-cos)/2"), NaN when
 * fewer than one vector counts (n: the non-zero vectors, or all of them with the "orthogonal" rule).
 * A non-finite s2 (never from finite tokens) gives what the reference gives: NaN for NaN, 0 for +inf;
 * -inf only reaches here clamped to 0 (the token sums' clamp, below). */
static inline void fin_distance(double s2, double n_total, double n_zero, int64_t orthogonal, int64_t half, double *dst) {
    const double n = orthogonal ? n_total : n_total - n_zero;
    const int kind = fin_kind(s2);
    if (!(n >= 1.0) || kind == 1) {
        fin_nan(dst);
        return;
    }
    if (kind != 0) {
        *dst = 0.0;
        return;
    }
    double d = 1.0 - s2 / (n * n);
    d = d < 0.0 ? 0.0 : (d > 2.0 ? 2.0 : d);
    *dst = half ? d / 2.0 : d;
}

/* The JSD's mean and standard error of one map (jsd_pairs._jsd): NaN without pairs, error 0 when exact. */
static inline void fin_jsd(double count, double mean, double var, int exact, double *jsd, double *err) {
    if (!(count > 0.0)) {
        fin_nan(jsd);
        fin_nan(err);
        return;
    }
    *jsd = mean;
    *err = exact ? 0.0 : sqrt(var) / sqrt(count);
}

/* row_results: the per-row means of one map (NaN where no row, or no row on an object, counts). */
static inline void fin_rows(const double *sums, int64_t BM, int64_t j, double nq, double log_k, int64_t objects,
                            double *out) {
    const double nz = sums[2 * BM + j], own_count = sums[7 * BM + j];
    if (nz != 0.0) {
        out[5 * BM + j] = sums[j] / log_k / nz;
        out[6 * BM + j] = sums[BM + j] / nz;
    } else {
        fin_nan(out + 5 * BM + j);
        fin_nan(out + 6 * BM + j);
    }
    if (nq != 0.0) {
        /* the share of all-zero rows, exactly 0 and 1 at its ends: -ffast-math made 1 - nz / nq an fma with 1 / nq,
           3e-17 where no row is zero */
        out[7 * BM + j] = nz == nq ? 0.0 : nz == 0.0 ? 1.0 : (nq - nz) / nq;
        out[10 * BM + j] = sums[4 * BM + j] / nq;
    } else {
        fin_nan(out + 7 * BM + j);
        fin_nan(out + 10 * BM + j);
    }
    if (objects && own_count > 0.0) {
        out[8 * BM + j] = sums[5 * BM + j] / own_count;
        out[9 * BM + j] = sums[6 * BM + j] / own_count;
    } else {
        fin_nan(out + 8 * BM + j);
        fin_nan(out + 9 * BM + j);
    }
}

/* The token sums' clamp at 0 (round-off), NaN kept as NaN (a compare-and-select may not keep it under -ffast-math). */
static inline double fin_clamp0(double x) {
    const int kind = fin_kind(x);
    return kind == 1 || kind == 2 ? x : (kind == 3 || x < 0.0 ? 0.0 : x);
}

int nl_head_finalise(const double *s2, const int64_t *zeros, int64_t T, const double *s_att, int64_t K, const double *sums,
                     const double *n_query, const double *log_k, const double *j_count, const double *j_mean,
                     const double *j_var, const uint8_t *exact, int64_t B, int64_t H, int64_t heads_out, int64_t objects,
                     int64_t half, int64_t orthogonal, double *out, int64_t *out_zero) {
    const int64_t M = H + 1, BM = B * M;
    if (heads_out && T < 2 + H) return 1;
    for (int64_t b = 0; b < B; ++b) {
        const double nq = n_query[b];
        const double *s2b = s2 + b * T;
        const int64_t *zb = zeros + b * T;
        double input;
        fin_distance(fin_clamp0(s2b[0]), nq, (double)zb[0], orthogonal, half, &input);
        for (int64_t m = 0; m < M; ++m) {
            const int64_t j = b * M + m, col = m == H ? 1 : 2 + m; /* the head mean's output is the branch */
            out[j] = input;
            out_zero[j] = zb[0];
            if (m == H || heads_out) {
                fin_distance(fin_clamp0(s2b[col]), nq, (double)zb[col], orthogonal, half, out + BM + j);
                out_zero[BM + j] = zb[col];
            } else {
                fin_nan(out + BM + j);
                out_zero[BM + j] = 0;
            }
            const double *row = s_att + j * K;
            double norm2 = 0.0;
            for (int64_t k = 0; k < K; ++k) norm2 += row[k] * row[k];
            fin_distance(norm2, nq, (double)(int64_t)sums[3 * BM + j], orthogonal, half, out + 2 * BM + j);
            if (j_count) {
                fin_jsd(j_count[j], j_mean[j], j_var[j], exact[b] != 0, out + 3 * BM + j, out + 4 * BM + j);
            } else {
                fin_nan(out + 3 * BM + j);
                fin_nan(out + 4 * BM + j);
            }
            fin_rows(sums, BM, j, nq, log_k[b], objects, out);
        }
    }
    return 0;
}

/* nl_head_finalise with its 20 arguments packed in one int64 array (pointers as addresses, in the order
 * of its parameters): one ctypes argument to convert instead of 20, the most of a call's cost at batch 1. */
int nl_head_finalise_packed(const int64_t *a) {
    return nl_head_finalise((const double *)a[0], (const int64_t *)a[1], a[2], (const double *)a[3], a[4],
                            (const double *)a[5], (const double *)a[6], (const double *)a[7], (const double *)a[8],
                            (const double *)a[9], (const double *)a[10], (const uint8_t *)a[11], a[12], a[13], a[14],
                            a[15], a[16], a[17], (double *)a[18], (int64_t *)a[19]);
}

/* nl_row_stats and nl_token_stats with their integer and pointer arguments packed in one int64 array (pointers as
 * addresses, NULL as 0, in the order of their parameters; nl_row_stats' scale apart): one ctypes argument to convert
 * instead of 23 or 17, most of a call's cost at batch 1. Called through volatile pointers: the kernels are compiled
 * as they are without these wrappers (never inlined into them). */
typedef int (*nl_row_stats_fn)(const float *, float, const float *, const uint8_t *, const int64_t *, const int32_t *,
                               const int32_t *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                               int64_t, int64_t, double *, double *, float *, float *, uint8_t *, float *, const nl_suite *);
typedef int (*nl_token_stats_fn)(const float *, int64_t, const float *, int64_t, const float *, const float *, int64_t,
                                 const float *, const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                 double *, int64_t *);

int nl_row_stats_packed(const int64_t *a, float scale) {
    nl_row_stats_fn volatile f = nl_row_stats;
    return f((const float *)a[0], scale, (const float *)a[1], (const uint8_t *)a[2], (const int64_t *)a[3],
             (const int32_t *)a[4], (const int32_t *)a[5], (const float *)a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
             a[14], a[15], (double *)a[16], (double *)a[17], (float *)a[18], (float *)a[19], (uint8_t *)a[20], (float *)a[21],
             (const nl_suite *)a[22]);
}

int nl_token_stats_packed(const int64_t *a) {
    nl_token_stats_fn volatile f = nl_token_stats;
    return f((const float *)a[0], a[1], (const float *)a[2], a[3], (const float *)a[4], (const float *)a[5], a[6],
             (const float *)a[7], (const float *)a[8], (const float *)a[9], a[10], a[11], a[12], a[13], a[14], (double *)a[15],
             (int64_t *)a[16]);
}

/* The cheap query-dependence suite's columns of one site from the sums of its native pass (suite.c, SuiteSums),
 * as nlanalysis.measure.native_suite._numpy_columns computes them (the reference; tests compare the two): at
 * batch 1 that is ~40 NumPy and torch calls per layer. Layout (C order, contiguous, double; M maps, the first H
 * with logits; K keys, the spatial ones from `sp0`, Ks = K - sp0):
 *   sums [5, B, M], p_k [B, M, Ks]  the NMI's, distances' and local masses' sums, or NULL (no spatial sums)
 *   has_pos                         the distances and local masses were summed (cell centres given)
 *   km [B, K]                       valid keys (1/0), or NULL (all)
 *   unary [B, H, K], pair_sums [2, B, H], pair_s [B, H, K]  the DNL split's, or unary NULL (none)
 *   cross [2, B, M]                 cosine sums with the previous site from map `cross_from` on, or NULL
 *   out [R, B, M]                   every entry NaN, then the columns at rows at[0..6] (qk_nmi, att_distance_px,
 *                                   att_local, att_local_uniform, unary_var_share, att_pairwise_only, cross_site_cos)
 * NaN is written where the reference divides by a zero count (fin_nan, decided on the counts). */
static inline void fin_inf(double *dst) {
    const uint64_t bits = 0x7ff0000000000000ULL;
    memcpy(dst, &bits, sizeof bits);
}

static void columns_spatial(const double *sums, const double *p_k, int64_t has_pos, const double *km, int64_t B, int64_t M,
                          int64_t K, int64_t sp0, const int64_t *at, double *out) {
    const int64_t BM = B * M, Ks = K - sp0;
    for (int64_t b = 0; b < B; ++b) {
        double n_k = (double)Ks; /* valid spatial keys */
        if (km) {
            n_k = 0.0;
            for (int64_t k = sp0; k < K; ++k) n_k += km[b * K + k];
        }
        for (int64_t m = 0; m < M; ++m) {
            const int64_t j = b * M + m;
            const double n_q = sums[4 * BM + j];
            if (!(n_q > 0.0)) continue; /* no query counted: NaN, as 0 / 0 in the reference */
            const double *p = p_k + j * Ks;
            double h_k = 0.0;
            for (int64_t k = 0; k < Ks; ++k) {
                const double q = p[k] / n_q;
                h_k -= q * log(q > 0.0 ? q : 1.0); /* xlogy(q, q): 0 at 0 (no log(0) for -ffast-math to fold) */
            }
            double mutual = h_k - sums[j] / n_q;
            mutual = mutual > 0.0 ? mutual : 0.0; /* I >= 0 exactly: the clamp removes round-off */
            const double den = log(n_q) * h_k;
            double *nmi = out + at[0] * BM + j;
            /* one query (log n_q = 0) or one key (H(k) = 0): no information to share, NaN as in the reference */
            if (n_q >= 2.0 && h_k > 0.0) *nmi = mutual / sqrt(den > 1e-300 ? den : 1e-300);
            if (has_pos) {
                out[at[1] * BM + j] = sums[BM + j] / n_q;
                out[at[2] * BM + j] = sums[2 * BM + j] / n_q;
                if (n_k > 0.0) out[at[3] * BM + j] = sums[3 * BM + j] / n_k / n_q;
                else if (sums[3 * BM + j] > 0.0) fin_inf(out + at[3] * BM + j); /* x / 0; 0 / 0 stays NaN */
            }
        }
    }
}

static void columns_dnl(const double *unary, const double *pair_sums, const double *pair_s, const double *km, double scale,
                      int64_t B, int64_t H, int64_t M, int64_t K, const int64_t *at, double *out) {
    const int64_t BM = B * M, BH = B * H;
    for (int64_t b = 0; b < B; ++b) {
        const double *w = km ? km + b * K : NULL;
        double n_k = (double)K;
        if (w) {
            n_k = 0.0;
            for (int64_t k = 0; k < K; ++k) n_k += w[k];
        }
        for (int64_t h = 0; h < H; ++h) {
            const int64_t j = b * M + h, i = b * H + h;
            const double *u = unary + i * K, *s = pair_s + i * K;
            const double n_rows = pair_sums[BH + i];
            double s2 = 0.0;
            for (int64_t k = 0; k < K; ++k) s2 += s[k] * s[k];
            fin_distance(s2, (double)(int64_t)nearbyint(n_rows), 0.0, 0, 0, out + at[5] * BM + j);
            if (!(n_k > 0.0) || !(n_rows > 0.0)) continue; /* 0 / 0 in the reference */
            double mean = 0.0, var = 0.0;
            for (int64_t k = 0; k < K; ++k) mean += w ? u[k] * w[k] : u[k];
            mean /= n_k;
            for (int64_t k = 0; k < K; ++k) {
                const double d = w ? (u[k] - mean) * w[k] : u[k] - mean;
                var += d * d;
            }
            const double unary_var = scale * scale * var / n_k, total = unary_var + pair_sums[i] / (n_rows * n_k);
            if (total > 0.0) out[at[4] * BM + j] = unary_var / total;
        }
    }
}

int nl_suite_columns(const int64_t *a, double scale) {
    const double *sums = (const double *)a[0], *p_k = (const double *)a[1], *km = (const double *)a[3];
    const double *unary = (const double *)a[4], *pair_sums = (const double *)a[5], *pair_s = (const double *)a[6];
    const double *cross = (const double *)a[7];
    const int64_t has_pos = a[2], cross_from = a[8], B = a[9], H = a[10], M = a[11], K = a[12], sp0 = a[13], R = a[15];
    double *out = (double *)a[14];
    const int64_t *at = a + 16, BM = B * M;
    for (int64_t i = 0; i < R * BM; ++i) fin_nan(out + i);
    if (sums && p_k) columns_spatial(sums, p_k, has_pos, km, B, M, K, sp0, at, out);
    if (unary && pair_sums && pair_s) columns_dnl(unary, pair_sums, pair_s, km, scale, B, H, M, K, at, out);
    if (cross)
        for (int64_t j = 0; j < BM; ++j)
            if (j % M >= cross_from && cross[BM + j] > 0.0) out[at[6] * BM + j] = cross[j] / cross[BM + j];
    return 0;
}
