/* The cheap query-dependence suite of nlanalysis.measure.query_dep, per softmax row, inside nl_row_stats's pass
 * (included by row_stats.c): each row is read while it is in L1, no map is formed again.
 *
 * Reference: nlanalysis.measure.head_suite.HeadSuite (ViT heads and head mean) and
 * nlanalysis.measure.query_dep.suite_pass (NL blocks), eager; tests check the two agree. Per valid query,
 * per map (heads, then the head mean), with r the row over the K measured keys (masked keys 0) and
 * a = r / sum(r) over the spatial keys (keys sp0..K), where that row is not all zero (denormals flushed: a row
 * with no normal weight there adds nothing to p_k and sums, its query not counted for that map):
 *   p_k   [B, M, Ks]  += y / T, y = a + eps on valid spatial keys, T = sum y  (the NMI's key marginal)
 *   sums  [5, B, M]   += entropy of y / T (nats), sum_k a_k dist(q, k) (pixels), sum_k a_k near(q, k),
 *                        sum_k w_k near(q, k) (the uniform map's local mass, times the valid keys), 1
 * and per head, from the logits row l (before the softmax overwrites it), the DNL pairwise-only row
 * p = softmax over valid keys of scale (l_j - u_j), u_j = mu_q . k_j (the unary term, in logit units):
 *   pair_s    [B, H, K] += p / ||p||
 *   pair_sums [2, B, H] += scale^2 sum_j w_j (x_j - mean_w x)^2 with x = l - u (n_k times the pairwise
 *                          term's variance across keys: the query's own term is a constant of the row), 1
 *   pair_exp  [B, H]    += 1 for a row formed with an exp per key (see suite_pair; NULL: not counted)
 * and, with keep, every valid query's rows and their squared norms for the next site, and the cosines with the
 * previous site's rows (cross).
 * near(q, k): |dy| <= reach_y and |dx| <= reach_x between the cell centres. Transcendentals in float (as
 * the rest of the pass: exp_nonpositive, log_positive, polynomials that vectorise), every sum in double. All
 * outputs are added to (zero them before the first call). Every loop over keys is branch-free, so that GCC
 * vectorises it (check: -fopt-info-vec-missed).
 */
typedef struct {
    double *unary;           /* [B, H, K] or NULL: no DNL split; read, or written first with unary_from_logits */
    int64_t unary_from_logits; /* 1: u_j = the mean over this call's valid queries of their logits l_ij (this call holds
                                  every query of the site): mu_q . k_j, as l_ij = q_i . k_j is linear in q_i */
    const double *qpos;      /* [nq, 2] centres (y, x) in pixels of this call's queries, or NULL: no distances */
    const double *kpos;      /* [Ks, 2] centres of the spatial keys */
    double reach_y, reach_x; /* the 3x3 neighbourhood: 1.5 key cells */
    int64_t sp0;             /* first spatial key among the K (Ks = K - sp0) */
    double eps;              /* the NMI's eps */
    double *p_k;             /* out [B, M, Ks], or NULL: no NMI / distances / local masses */
    double *sums;            /* out [5, B, M] */
    double *pair_s;          /* out [B, H, K] (with unary) */
    double *pair_sums;       /* out [2, B, H] */
    float *keep;             /* out [B, M, keep_n, K] every valid query's rows (masked keys 0), at this call's first
                                query; or NULL: cross_site_cos needs the rows of the next site */
    const float *prev;       /* [B, prev_maps, keep_n, K] the previous site's kept rows (same queries), or NULL */
    int64_t keep_n, prev_maps, cross_from; /* maps cross_from..M-1 are compared with the previous site's map h - M + prev_maps */
    double *cross;           /* out [2, B, M]: sum over valid queries of cos(row, previous row) where both are non-zero, and their count */
    double *keep_n2;         /* out [B, M, keep_n] the kept rows' squared norms (same queries as keep), or NULL */
    const double *prev_n2;   /* [B, prev_maps, keep_n] the previous site's keep_n2, or NULL: formed again from prev */
    double *pair_exp;        /* out [B, H] (with unary) the rows whose pairwise-only row took an exp per key, or NULL */
} nl_suite;

typedef struct { /* one thread's share of the outputs and its scratch */
    double *p_k, *sums, *pair_s, *pair_sums, *pair_exp, *dist, *cross;
    float *near, *e;
} suite_local;

static void suite_free(suite_local *t) {
    free(t->p_k);
    free(t->sums);
    free(t->pair_s);
    free(t->pair_sums);
    free(t->pair_exp);
    free(t->cross);
    free(t->dist);
    free(t->near);
    free(t->e);
}

/* 0: allocated (or no suite); -1: out of memory */
static int suite_alloc(const nl_suite *su, suite_local *t, int64_t B, int64_t H, int64_t M, int64_t K) {
    memset(t, 0, sizeof(*t));
    if (!su) return 0;
    const int64_t Ks = K - su->sp0, k1 = K > 0 ? K : 1;
    t->p_k = calloc((size_t)(B * M * (Ks > 0 ? Ks : 1)), sizeof(double));
    t->sums = calloc((size_t)(5 * B * M), sizeof(double));
    t->pair_s = calloc((size_t)(B * H * k1), sizeof(double));
    t->pair_sums = calloc((size_t)(2 * B * H), sizeof(double));
    t->pair_exp = calloc((size_t)(B * H > 0 ? B * H : 1), sizeof(double));
    t->cross = calloc((size_t)(2 * B * M), sizeof(double));
    t->dist = malloc(sizeof(double) * (size_t)k1);
    t->near = malloc(sizeof(float) * (size_t)k1);
    t->e = malloc(sizeof(float) * (size_t)k1);
    return (t->p_k && t->sums && t->pair_s && t->pair_sums && t->pair_exp && t->cross && t->dist && t->near && t->e) ? 0 : -1;
}

static void suite_reduce(const nl_suite *su, const suite_local *t, int64_t B, int64_t H, int64_t M, int64_t K) {
    const int64_t Ks = K - su->sp0;
    if (su->p_k) {
        for (int64_t j = 0; j < B * M * Ks; ++j) su->p_k[j] += t->p_k[j];
        for (int64_t j = 0; j < 5 * B * M; ++j) su->sums[j] += t->sums[j];
    }
    if (su->unary) {
        for (int64_t j = 0; j < B * H * K; ++j) su->pair_s[j] += t->pair_s[j];
        for (int64_t j = 0; j < 2 * B * H; ++j) su->pair_sums[j] += t->pair_sums[j];
        if (su->pair_exp)
            for (int64_t j = 0; j < B * H; ++j) su->pair_exp[j] += t->pair_exp[j];
    }
    if (su->prev)
        for (int64_t j = 0; j < 2 * B * M; ++j) su->cross[j] += t->cross[j];
}

/* keep query i's row r of map h (image b) and its squared norm for the next site, and its cosine with the previous
 * site's (that row's squared norm kept with it: prev_n2; without, formed again) */
static void suite_cross(const nl_suite *su, suite_local *t, const float *r, int64_t K, int64_t b, int64_t h, int64_t M, int64_t B, int64_t i) {
    const int64_t at = (b * M + h) * su->keep_n + i, from = (b * su->prev_maps + h - M + su->prev_maps) * su->keep_n + i;
    float *restrict kept = su->keep + at * K;
    const int compare = su->prev && h >= su->cross_from;
    double n2 = 0.0, dot = 0.0, m2 = 0.0;
    if (compare) {
        const float *restrict p = su->prev + from * K;
        for (int64_t j = 0; j < K; ++j) {
            const double v = (double)r[j];
            kept[j] = r[j];
            n2 += v * v;
            dot += v * (double)p[j];
        }
        if (su->prev_n2)
            m2 = su->prev_n2[from];
        else
            for (int64_t j = 0; j < K; ++j) m2 += (double)p[j] * (double)p[j];
    } else {
        for (int64_t j = 0; j < K; ++j) {
            kept[j] = r[j];
            n2 += (double)r[j] * (double)r[j];
        }
    }
    if (su->keep_n2) su->keep_n2[at] = n2;
    if (compare && n2 > 0.0 && m2 > 0.0) {
        t->cross[b * M + h] += dot / sqrt(n2 * m2);
        t->cross[(B + b) * M + h] += 1.0;
    }
}

/* u = the mean of the valid queries' logits rows, per (image, head): with unary_from_logits, before the pass */
static void suite_unary(const nl_suite *su, const float *logits, const uint8_t *qm, int64_t B, int64_t H, int64_t nq, int64_t N,
                        int64_t lbh, int64_t n_pre, int64_t first) {
    const int64_t K = N - first;
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H;
        double *u = su->unary + bh * K;
        double n = 0.0;
        for (int64_t j = 0; j < K; ++j) u[j] = 0.0;
        const float *l[4]; /* rows added four at a time: u is read and written once per four */
        int c = 0;
        for (int64_t i = 0; i < nq; ++i) {
            if (qm && !qm[b * nq + i]) continue;
            l[c++] = logits + bh * lbh + (n_pre + i) * N + first;
            n += 1.0;
            if (c == 4) {
                const float *l0 = l[0], *l1 = l[1], *l2 = l[2], *l3 = l[3];
                for (int64_t j = 0; j < K; ++j) u[j] += ((double)l0[j] + (double)l1[j]) + ((double)l2[j] + (double)l3[j]);
                c = 0;
            }
        }
        for (int k = 0; k < c; ++k)
            for (int64_t j = 0; j < K; ++j) u[j] += (double)l[k][j];
        const double in = n > 0.0 ? 1.0 / n : 0.0;
        for (int64_t j = 0; j < K; ++j) u[j] *= in;
    }
}

/* query i's distance to each spatial key and its 3x3 flags (in t); returns the valid keys near it */
static double suite_geometry(const nl_suite *su, suite_local *t, int64_t i, const float *ws, int64_t Ks) {
    const double qy = su->qpos[2 * i], qx = su->qpos[2 * i + 1], ry = su->reach_y, rx = su->reach_x;
    const double *restrict kp = su->kpos;
    double *restrict dist = t->dist;
    float *restrict near = t->near;
    double count = 0.0;
    for (int64_t j = 0; j < Ks; ++j) { /* branch-free, so that it vectorises */
        const double dy = qy - kp[2 * j], dx = qx - kp[2 * j + 1];
        const float nr = ((fabs(dy) <= ry) & (fabs(dx) <= rx)) ? 1.f : 0.f;
        dist[j] = sqrt(dy * dy + dx * dx);
        near[j] = nr;
        count += (double)(nr * ws[j]);
    }
    return count;
}

/* one map's row r (K keys, masked keys 0) of a valid query: the NMI's marginal and entropy, distance, local
 * mass; ss: this map's first sum (stride between sums), near_count: suite_geometry's (0 without positions).
 * A row all zero on the spatial keys adds nothing (not even its count): it has no distribution to renormalise.
 * Two passes over the row: the sums that do not need its total, then those that do. */
static void suite_spatial(const nl_suite *su, const suite_local *t, const float *r, const float *ws, int64_t Ks, double n_valid,
                          double *restrict pk, double *ss, int64_t stride, int geo, double near_count) {
    const float *restrict rs = r + su->sp0;
    double total = 0.0, dist = 0.0, local = 0.0;
    if (geo) {
        const double *restrict dd = t->dist;
        const float *restrict nr = t->near;
        for (int64_t j = 0; j < Ks; ++j) {
            total += (double)rs[j];
            dist += (double)rs[j] * dd[j];
            local += (double)(rs[j] * nr[j]);
        }
    } else {
        for (int64_t j = 0; j < Ks; ++j) total += (double)rs[j];
    }
    if (!(total > 0.0)) return; /* all zero on the spatial keys: left out, as the eager suites leave it */
    const double iw = 1.0 / total;
    const float fi = (float)iw, fe = (float)su->eps;
    const double T = 1.0 + su->eps * n_valid, iT = 1.0 / T;
    double ylogy = 0.0;
    for (int64_t j = 0; j < Ks; ++j) {
        const float v = rs[j] * fi + fe * ws[j];
        ylogy += (double)(v * log_positive(v)); /* 0 on masked keys (v = 0) */
        pk[j] += (double)v * iT;
    }
    ss[0] += log(T) - ylogy * iT;
    if (geo) {
        ss[stride] += dist * iw;
        ss[2 * stride] += local * iw;
        ss[3 * stride] += near_count;
    }
    ss[4 * stride] += 1.0;
}

/* The DNL split's two vectors per image and head, once per call (the unary term known): gain [2, B, H, K] float,
 *   uc_j = u_j - u_min (u_min: the least over valid keys; 0 on masked keys)
 *   g_j  = exp(-scale uc_j) on valid keys (0 below 2^-126, as the flushed floats of the pass), 0 on masked keys
 * for suite_pair. An `omp for`: every thread of the pass calls it; it ends with a barrier. */
static void suite_gain(const nl_suite *su, const float *km, float *gain, int64_t B, int64_t H, int64_t K, float scale) {
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const double *u = su->unary + bh * K;
        const float *w = km ? km + (bh / H) * K : NULL;
        float *uc = gain + bh * K, *g = gain + (B * H + bh) * K;
        double lo = 0.0;
        int any = 0;
        for (int64_t j = 0; j < K; ++j)
            if (!w || w[j] > 0.f) {
                lo = any ? fmin(lo, u[j]) : u[j];
                any = 1;
            }
        for (int64_t j = 0; j < K; ++j) {
            const int valid = !w || w[j] > 0.f;
            const double c = u[j] - lo, e = exp(-(double)scale * c);
            uc[j] = valid ? (float)c : 0.f;
            g[j] = valid && e >= 1.1754944e-38 ? (float)e : 0.f;
        }
    }
}

/* The log of a row's largest product e1_j g_j below which suite_pair forms the row with an exp per key. */
#define PAIR_LOG_FLOOR -58.f

/* The DNL pairwise-only row of one head (K keys of a valid query) and its variance sums, without a second exp per
 * key where that is exact to float rounding. With mx the logits row's maximum (over every token, as the pass's)
 * and e1_j = exp(scale (l_j - mx)) the pass's softmax numerators of the row (before it normalises them),
 *   d_j = (l_j - mx) - uc_j = x_j - (mx - u_min),  x_j = l_j - u_j,
 * so e1_j g_j = exp(scale d_j) = exp(L) q_j, with D = max over valid keys of d_j, L = scale D <= 0 (l_j <= mx,
 * uc_j >= 0) and q_j = exp(scale (x_j - max_valid x)) the exact row up to its norm (largest 1). The row is then
 * p_j = (e1_j c) g_j, c = exp(-L): a multiply per key, where an exp per key costs ~15 operations.
 * Bound: with L >= PAIR_LOG_FLOOR = -58, c <= e^58 and e1_j c <= e^58 (no overflow). An entry q_j > 0 is lost only
 * where a factor or the product falls below the least normal float 2^-126 (exp_nonpositive gives 0 below
 * e^-87.34; the rest is flushed): e1_j < e^-87.3 or g_j < e^-87.3 give q_j = e1_j g_j e^-L < e^(-87.3 + 58)
 * < 1.9e-13 (both factors <= 1), and a product below 2^-126 is dropped by an exp per key as well. So no dropped entry
 * reaches 1.9e-13 of the row's largest; rows with L < -58 take the exp per key (counted in pair_exp). A common
 * factor's rounding (c, L) cancels in p / ||p||; per entry the error is that of e1_j (its argument's rounding,
 * ~|scale (l_j - mx)| 6e-8, and the polynomial's 1.3e-7), of g_j and of two products, as an exp of x_j - max x
 * rounded in float. The variance sums take d_j: a constant shift of x. n_w: the sum of the key weights w. */
static void suite_pair(suite_local *t, const float *l, float mx, const float *e1, const float *uc, const float *g, const float *w,
                       int64_t K, float scale, double n_w, double *restrict acc, double *ps, int64_t stride, double *exp_rows) {
    float *restrict e = t->e;
    float dm = -3.4e38f;
    double sx = 0.0, sxx = 0.0;
    for (int64_t j = 0; j < K; ++j) { /* no transcendental; the largest over valid keys without a branch (vectorises) */
        const float d = (l[j] - mx) - uc[j];
        const double dw = (double)d * (double)w[j];
        e[j] = d;
        dm = fmaxf(dm, w[j] > 0.f ? d : -3.4e38f);
        sx += dw;
        sxx += dw * dw;
    }
    if (!(dm > -3e38f)) return; /* no valid key */
    const float lmax = dm * scale;
    float z2 = 0.f;
    if (lmax >= PAIR_LOG_FLOOR) {
        const float c = expf(-lmax);
        for (int64_t j = 0; j < K; ++j) {
            const float p = (e1[j] * c) * g[j]; /* 0 on masked keys (g_j = 0) */
            e[j] = p;
            z2 += p * p;
        }
    } else {
        for (int64_t j = 0; j < K; ++j) {
            const float p = w[j] > 0.f ? exp_nonpositive(fminf(e[j] - dm, 0.f) * scale) : 0.f; /* the largest is 1 */
            e[j] = p;
            z2 += p * p;
        }
        *exp_rows += 1.0;
    }
    if (!(z2 > 0.f)) return;
    const float inv = 1.f / sqrtf(z2);
    for (int64_t j = 0; j < K; ++j) acc[j] += (double)(e[j] * inv);
    ps[0] += (double)scale * (double)scale * (sxx - (n_w > 0.0 ? sx * sx / n_w : 0.0));
    ps[stride] += 1.0;
}
