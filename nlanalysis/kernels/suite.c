/* The cheap query-dependence suite of nlanalysis.measure.query_dep, per softmax row, inside nl_row_stats's pass
 * (included by row_stats.c): each row is read while it is in L1, no map is formed again.
 *
 * Reference: nlanalysis.measure.head_suite.HeadSuite (ViT heads and head mean) and
 * nlanalysis.measure.query_dep.suite_pass (NL blocks), eager; tests check the two agree. Per valid query,
 * per map (heads, then the head mean), with r the row over the K measured keys (masked keys 0) and
 * a = r / sum(r) over the spatial keys (keys sp0..K; 0 when the row is all zero there):
 *   p_k   [B, M, Ks]  += y / T, y = a + eps on valid spatial keys, T = sum y  (the NMI's key marginal)
 *   sums  [5, B, M]   += entropy of y / T (nats), sum_k a_k dist(q, k) (pixels), sum_k a_k near(q, k),
 *                        sum_k w_k near(q, k) (the uniform map's local mass, times the valid keys), 1
 * and per head, from the logits row l (before the softmax overwrites it), the DNL pairwise-only row
 * p = softmax over valid keys of scale (l_j - u_j), u_j = mu_q . k_j (the unary term, in logit units):
 *   pair_s    [B, H, K] += p / ||p||
 *   pair_sums [2, B, H] += scale^2 sum_j w_j (x_j - mean_w x)^2 with x = l - u (n_k times the pairwise
 *                          term's variance across keys: the query's own term is a constant of the row), 1
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
} nl_suite;

typedef struct { /* one thread's share of the outputs and its scratch */
    double *p_k, *sums, *pair_s, *pair_sums, *dist, *cross;
    float *near, *e;
} suite_local;

static void suite_free(suite_local *t) {
    free(t->p_k);
    free(t->sums);
    free(t->pair_s);
    free(t->pair_sums);
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
    t->cross = calloc((size_t)(2 * B * M), sizeof(double));
    t->dist = malloc(sizeof(double) * (size_t)k1);
    t->near = malloc(sizeof(float) * (size_t)k1);
    t->e = malloc(sizeof(float) * (size_t)k1);
    return (t->p_k && t->sums && t->pair_s && t->pair_sums && t->cross && t->dist && t->near && t->e) ? 0 : -1;
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
    const double iw = total > 0.0 ? 1.0 / total : 0.0;
    const float fi = (float)iw, fe = (float)su->eps;
    const double T = (total > 0.0 ? 1.0 : 0.0) + su->eps * n_valid, iT = 1.0 / T;
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

/* the DNL pairwise-only row of one head from its logits row l (K keys, before the softmax is written over it);
 * n_w: the sum of the key weights w */
static void suite_pair(suite_local *t, const float *l, const double *u, const float *w, int64_t K, float scale, double n_w,
                       double *restrict acc, double *ps, int64_t stride) {
    float *restrict e = t->e;
    float mx = -3.4e38f;
    for (int64_t j = 0; j < K; ++j) { /* the largest over valid keys, without a branch (so that it vectorises) */
        const float x = (float)((double)l[j] - u[j]);
        e[j] = x;
        mx = fmaxf(mx, w[j] > 0.f ? x : -3.4e38f);
    }
    double sx = 0.0, sxx = 0.0;
    float z2 = 0.f;
    for (int64_t j = 0; j < K; ++j) {
        const float dx = e[j] - mx;
        const double d = (double)dx * (double)w[j];
        sx += d;
        sxx += d * d;
        const float p = w[j] > 0.f ? exp_nonpositive(fminf(dx, 0.f) * scale) : 0.f; /* the largest is 1 */
        e[j] = p;
        z2 += p * p;
    }
    if (!(z2 > 0.f)) return; /* no valid key */
    const float inv = 1.f / sqrtf(z2);
    for (int64_t j = 0; j < K; ++j) acc[j] += (double)(e[j] * inv);
    ps[0] += (double)scale * (double)scale * (sxx - (n_w > 0.0 ? sx * sx / n_w : 0.0));
    ps[stride] += 1.0;
}
