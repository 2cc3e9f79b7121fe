/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/* The HyperSplit tree builder of ebplane.stages.filter.tree in C (the compiled builder).
 *
 * It computes exactly what tree.build_numpy computes (the reference; tests compare the two
 * arrays), only without sorting at every node: each node keeps its boxes ordered by lo and by
 * hi in every used dimension, and a split partitions these orders stably, so a node costs
 * O(boxes x dimensions).  Counting the boxes on each side of a threshold needs only the raw
 * bounds: every box of a node overlaps the node's region and every candidate threshold lies
 * inside it (see build_numpy).
 *
 * build(lo, hi, plain, n, ndims, dims, binth, max_depth, max_leaf, leaf_dim)
 *   lo, hi: n * ndims little-endian uint64 (box bounds, boxes in priority order)
 *   plain:  n bytes, 1 when the box has no match: condition
 *   dims:   tuple of the dimensions used
 * -> (nodes: bytes of m * 4 uint64 (thresh, left, right, dim), leaf: bytes of uint32,
 *     depth, largest leaf), or ("unsplittable", first box index, boxes) when a leaf would
 *     hold more than max_leaf boxes that no dimension separates.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DIMS_MAX 16

struct work {
	uint32_t slot, n, depth;
	uint32_t *idx;	/* n box indices, ascending (= priority order) */
	uint32_t *ord;	/* per used dimension k: by lo at ord[2k*n], by hi at ord[(2k+1)*n] */
	uint64_t rlo[DIMS_MAX], rhi[DIMS_MAX];
};

struct ctx {
	const uint64_t *lo, *hi;
	const uint8_t *plain;
	uint32_t n, ndims, nd;
	uint32_t dims[DIMS_MAX];
	uint8_t *in_l, *in_r;	/* per box: goes left / right at the current split */
	uint64_t *nodes;	/* 4 words per node */
	size_t nnodes, cap_nodes;
	uint32_t *leaf;
	size_t nleaf, cap_leaf;
	struct work *stack;
	size_t sp, cap_stack;
};

#define LO(c, i, d) ((c)->lo[(size_t)(i) * (c)->ndims + (d)])
#define HI(c, i, d) ((c)->hi[(size_t)(i) * (c)->ndims + (d)])

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 1024;
	void *q;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	q = realloc(*p, n * size);
	if (!q)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

static int new_node(struct ctx *c, uint32_t leaf_dim)
{
	uint64_t *n;

	if (grow((void **)&c->nodes, &c->cap_nodes, (c->nnodes + 1) * 4, sizeof(uint64_t)))
		return -1;
	n = c->nodes + c->nnodes * 4;
	n[0] = 0;
	n[1] = 0;
	n[2] = 0;
	n[3] = leaf_dim;
	c->nnodes++;
	return 0;
}

static int push(struct ctx *c, const struct work *w)
{
	if (grow((void **)&c->stack, &c->cap_stack, c->sp + 1, sizeof(*w)))
		return -1;
	c->stack[c->sp++] = *w;
	return 0;
}

/* sorting the root's orders: qsort_r with the bound array and dimension */
struct key { const uint64_t *v; uint32_t ndims, d; };

static int cmp_idx(const void *a, const void *b, void *arg)
{
	const struct key *k = arg;
	uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
	uint64_t x = k->v[(size_t)i * k->ndims + k->d], y = k->v[(size_t)j * k->ndims + k->d];

	if (x != y)
		return x < y ? -1 : 1;
	return i < j ? -1 : (i > j);
}

/* keep the entries of a node's index and orders whose flag is set (order preserved) */
static int subset(const struct ctx *c, const struct work *w, const uint8_t *keep, uint32_t m,
		  struct work *out)
{
	uint32_t a, k, j;

	out->n = m;
	out->idx = malloc((size_t)(m ? m : 1) * sizeof(uint32_t));
	out->ord = malloc((size_t)(m ? m : 1) * 2 * (c->nd ? c->nd : 1) * sizeof(uint32_t));
	if (!out->idx || !out->ord) {
		free(out->idx);
		free(out->ord);
		return -1;
	}
	for (a = 0, j = 0; a < w->n; a++)
		if (keep[w->idx[a]])
			out->idx[j++] = w->idx[a];
	for (k = 0; k < 2 * c->nd; k++) {
		const uint32_t *src = w->ord + (size_t)k * w->n;
		uint32_t *dst = out->ord + (size_t)k * m;

		for (a = 0, j = 0; a < w->n; a++)
			if (keep[src[a]])
				dst[j++] = src[a];
	}
	return 0;
}

static void drop(struct work *w)
{
	free(w->idx);
	free(w->ord);
	w->idx = NULL;
	w->ord = NULL;
}

/* the best split of a node: 1 and (dim slot k, threshold), or 0 */
static int best_split(const struct ctx *c, const struct work *w, int must, uint32_t *bk,
		      uint64_t *bt)
{
	uint64_t n = w->n, span = 2 * n + 1;
	uint64_t best = (must ? n : n - 1) * span + span;
	uint32_t k;
	int found = 0;

	for (k = 0; k < c->nd; k++) {
		uint32_t d = c->dims[k];
		const uint32_t *ol = w->ord + (size_t)(2 * k) * n, *oh = ol + n;
		uint64_t rlo = w->rlo[d], rhi = w->rhi[d], v, t, nl, nr, worst, s;
		uint64_t a, p;

		if (LO(c, ol[n - 1], d) <= rlo && HI(c, oh[0], d) >= rhi)
			continue;	/* every box spans the whole region here */
		/* thresholds where a box starts (t = lo - 1), ascending; then where one ends */
		for (a = 0, p = 0; a < n; a++) {
			v = LO(c, ol[a], d);
			if (v <= rlo || (a > 0 && LO(c, ol[a - 1], d) == v))
				continue;
			t = v - 1;
			nl = a;	/* boxes with lo <= t: those before the first lo == v */
			while (p < n && HI(c, oh[p], d) <= t)
				p++;
			nr = n - p;
			worst = nl > nr ? nl : nr;
			s = worst * span + nl + nr;
			if (s < best) {
				best = s;
				*bk = k;
				*bt = t;
				found = 1;
			}
		}
		for (a = 0, p = 0; a < n; a++) {
			v = HI(c, oh[a], d);
			if (v >= rhi)
				break;
			if (a + 1 < n && HI(c, oh[a + 1], d) == v)
				continue;	/* the last of equal ends counts them all */
			t = v;
			nr = n - (a + 1);
			while (p < n && LO(c, ol[p], d) <= t)
				p++;
			nl = p;
			worst = nl > nr ? nl : nr;
			s = worst * span + nl + nr;
			if (s < best) {
				best = s;
				*bk = k;
				*bt = t;
				found = 1;
			}
		}
	}
	return found;
}

/* 0 done, -1 out of memory, 1 unsplittable (*bad_first, *bad_n) */
static int run(struct ctx *c, uint32_t binth, uint32_t max_depth, uint32_t max_leaf,
	       uint32_t leaf_dim, uint32_t *depth_max, uint32_t *leaf_max, uint32_t *bad_first,
	       uint32_t *bad_n)
{
	struct work w, l, r;
	uint32_t a, k, i, d;
	int rc = 0;

	while (c->sp) {
		w = c->stack[--c->sp];
		if (w.n > 1) {
			int64_t cut = -1;

			/* narrow the region to the boxes' bounding box */
			for (k = 0; k < c->nd; k++) {
				uint64_t minlo, maxhi;

				d = c->dims[k];
				minlo = LO(c, w.ord[(size_t)(2 * k) * w.n], d);
				maxhi = HI(c, w.ord[(size_t)(2 * k + 1) * w.n + w.n - 1], d);
				if (minlo > w.rlo[d])
					w.rlo[d] = minlo;
				if (maxhi < w.rhi[d])
					w.rhi[d] = maxhi;
			}
			/* boxes after the first that covers the region never win in it */
			for (a = 0; a < w.n && cut < 0; a++) {
				i = w.idx[a];
				if (!c->plain[i])
					continue;
				for (k = 0; k < c->nd; k++) {
					d = c->dims[k];
					if (LO(c, i, d) > w.rlo[d] || HI(c, i, d) < w.rhi[d])
						break;
				}
				if (k == c->nd)
					cut = a;
			}
			if (cut >= 0 && (uint32_t)cut + 1 < w.n) {
				uint32_t last = w.idx[cut];

				for (a = 0; a < w.n; a++)
					c->in_l[w.idx[a]] = w.idx[a] <= last;
				if (subset(c, &w, c->in_l, (uint32_t)cut + 1, &l)) {
					rc = -1;
					goto fail;
				}
				for (a = 0; a < w.n; a++)
					c->in_l[w.idx[a]] = 0;
				memcpy(l.rlo, w.rlo, sizeof(w.rlo));
				memcpy(l.rhi, w.rhi, sizeof(w.rhi));
				l.slot = w.slot;
				l.depth = w.depth;
				drop(&w);
				w = l;
			}
		}
		{
			uint32_t bk = 0;
			uint64_t bt = 0;
			int split = 0;

			if (w.n > binth && w.depth < max_depth)
				split = best_split(c, &w, w.n > max_leaf, &bk, &bt);
			if (!split) {
				uint64_t *node;

				if (w.n > max_leaf) {
					*bad_first = w.idx[0];
					*bad_n = w.n;
					rc = 1;
					goto fail;
				}
				if (grow((void **)&c->leaf, &c->cap_leaf, c->nleaf + w.n + 1,
					 sizeof(uint32_t))) {
					rc = -1;
					goto fail;
				}
				node = c->nodes + (size_t)w.slot * 4;
				node[0] = 0;
				node[1] = c->nleaf;
				node[2] = w.n;
				node[3] = leaf_dim;
				memcpy(c->leaf + c->nleaf, w.idx, (size_t)w.n * sizeof(uint32_t));
				c->nleaf += w.n;
				if (w.depth > *depth_max)
					*depth_max = w.depth;
				if (w.n > *leaf_max)
					*leaf_max = w.n;
				drop(&w);
				continue;
			}
			{
				uint32_t nl = 0, nr = 0, lslot = (uint32_t)c->nnodes;
				uint64_t *node;

				d = c->dims[bk];
				for (a = 0; a < w.n; a++) {
					i = w.idx[a];
					c->in_l[i] = LO(c, i, d) <= bt;
					c->in_r[i] = HI(c, i, d) > bt;
					nl += c->in_l[i];
					nr += c->in_r[i];
				}
				if (subset(c, &w, c->in_l, nl, &l)) {
					rc = -1;
					goto fail;
				}
				if (subset(c, &w, c->in_r, nr, &r)) {
					drop(&l);
					rc = -1;
					goto fail;
				}
				for (a = 0; a < w.n; a++)
					c->in_l[w.idx[a]] = c->in_r[w.idx[a]] = 0;
				if (new_node(c, leaf_dim) || new_node(c, leaf_dim)) {
					drop(&l);
					drop(&r);
					rc = -1;
					goto fail;
				}
				node = c->nodes + (size_t)w.slot * 4;
				node[0] = bt;
				node[1] = lslot;
				node[2] = lslot + 1;
				node[3] = d;
				memcpy(l.rlo, w.rlo, sizeof(w.rlo));
				memcpy(l.rhi, w.rhi, sizeof(w.rhi));
				memcpy(r.rlo, w.rlo, sizeof(w.rlo));
				memcpy(r.rhi, w.rhi, sizeof(w.rhi));
				l.rhi[d] = bt;
				r.rlo[d] = bt + 1;
				l.slot = lslot;
				r.slot = lslot + 1;
				l.depth = r.depth = w.depth + 1;
				drop(&w);
				if (push(c, &r)) {
					drop(&l);
					drop(&r);
					rc = -1;
					goto out;
				}
				if (push(c, &l)) {
					drop(&l);
					rc = -1;
					goto out;
				}
			}
		}
	}
	return 0;
fail:
	drop(&w);
out:
	while (c->sp)
		drop(&c->stack[--c->sp]);
	return rc;
}

static PyObject *hs_build(PyObject *self, PyObject *args)
{
	Py_buffer blo, bhi, bplain;
	Py_ssize_t n, ndims;
	PyObject *dims, *res = NULL;
	unsigned int binth, max_depth, max_leaf, leaf_dim;
	struct ctx c;
	struct work w;
	uint32_t depth_max = 0, leaf_max = 0, bad_first = 0, bad_n = 0, k, i;
	int rc;

	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*y*nnO!IIII", &blo, &bhi, &bplain, &n, &ndims,
			      &PyTuple_Type, &dims, &binth, &max_depth, &max_leaf, &leaf_dim))
		return NULL;
	memset(&c, 0, sizeof(c));
	memset(&w, 0, sizeof(w));
	if (n < 0 || n > UINT32_MAX / 2 || ndims <= 0 || ndims > DIMS_MAX ||
	    PyTuple_GET_SIZE(dims) > ndims ||
	    blo.len < n * ndims * 8 || bhi.len < n * ndims * 8 || bplain.len < n) {
		PyErr_SetString(PyExc_ValueError, "_hsplit.build: bad array sizes");
		goto done;
	}
	c.lo = blo.buf;
	c.hi = bhi.buf;
	c.plain = bplain.buf;
	c.n = (uint32_t)n;
	c.ndims = (uint32_t)ndims;
	c.nd = (uint32_t)PyTuple_GET_SIZE(dims);
	for (k = 0; k < c.nd; k++) {
		long d = PyLong_AsLong(PyTuple_GET_ITEM(dims, k));

		if (d < 0 || d >= ndims) {
			if (!PyErr_Occurred())
				PyErr_SetString(PyExc_ValueError, "_hsplit.build: bad dimension");
			goto done;
		}
		c.dims[k] = (uint32_t)d;
	}
	if (n == 0) {
		res = Py_BuildValue("(y#y#II)", "", (Py_ssize_t)0, "", (Py_ssize_t)0, 0u, 0u);
		goto done;
	}
	c.in_l = calloc((size_t)n, 1);
	c.in_r = calloc((size_t)n, 1);
	w.n = c.n;
	w.idx = malloc((size_t)n * sizeof(uint32_t));
	w.ord = malloc((size_t)n * 2 * (c.nd ? c.nd : 1) * sizeof(uint32_t));
	if (!c.in_l || !c.in_r || !w.idx || !w.ord || new_node(&c, leaf_dim)) {
		PyErr_NoMemory();
		drop(&w);
		goto cleanup;
	}
	for (i = 0; i < c.n; i++)
		w.idx[i] = i;
	for (k = 0; k < c.ndims; k++) {
		w.rlo[k] = 0;
		w.rhi[k] = UINT64_MAX;
	}
	Py_BEGIN_ALLOW_THREADS
	for (k = 0; k < 2 * c.nd; k++) {
		struct key key = {k & 1 ? c.hi : c.lo, c.ndims, c.dims[k / 2]};
		uint32_t *o = w.ord + (size_t)k * n;

		memcpy(o, w.idx, (size_t)n * sizeof(uint32_t));
		qsort_r(o, (size_t)n, sizeof(uint32_t), cmp_idx, &key);
	}
	Py_END_ALLOW_THREADS
	if (push(&c, &w)) {
		PyErr_NoMemory();
		drop(&w);
		goto cleanup;
	}
	Py_BEGIN_ALLOW_THREADS
	rc = run(&c, binth, max_depth, max_leaf, leaf_dim, &depth_max, &leaf_max, &bad_first,
		 &bad_n);
	Py_END_ALLOW_THREADS
	if (rc < 0)
		PyErr_NoMemory();
	else if (rc > 0)
		res = Py_BuildValue("(sII)", "unsplittable", bad_first, bad_n);
	else
		res = Py_BuildValue("(y#y#II)", (const char *)c.nodes,
				    (Py_ssize_t)(c.nnodes * 4 * sizeof(uint64_t)),
				    (const char *)c.leaf, (Py_ssize_t)(c.nleaf * sizeof(uint32_t)),
				    depth_max, leaf_max);
cleanup:
	free(c.in_l);
	free(c.in_r);
	free(c.nodes);
	free(c.leaf);
	free(c.stack);
done:
	PyBuffer_Release(&blo);
	PyBuffer_Release(&bhi);
	PyBuffer_Release(&bplain);
	return res;
}

static PyMethodDef methods[] = {
	{"build", hs_build, METH_VARARGS, "Build a HyperSplit tree over boxes (see the module doc)."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_hsplit",
	"The compiled HyperSplit builder of ebplane.stages.filter.tree.", -1, methods,
};

PyMODINIT_FUNC PyInit__hsplit(void)
{
	return PyModule_Create(&module);
}
