package cache

import (
	"context"
	"fmt"
	"time"

	"github.com/valyala/fastjson"
)

// embedPlan contains what a KindEmbed plan needs to look up its inputs one
// by one and to build an upstream body with only the missing ones.
type embedPlan struct {
	body  []byte // the request body, not copied
	input span   // span of the input array in body, when there is one
	items []embedItem
}

// embedItem is one input of an embedding request.
type embedItem struct {
	key string // itemKey of the input
	raw span   // span of the input string in an input array
}

// embedFamily returns the name under which r's vectors are cached.
// /api/embed and /v1/embeddings share it: Ollama serves both with the same
// normalized vectors, while the legacy /api/embeddings returns vectors
// that are not normalized.
func embedFamily(r route) string {
	if r == routeEmbeddings {
		return "embeddings"
	}
	return "embed"
}

// planEmbed completes the plan of an embedding request: the key of each
// input, and where the inputs sit in the body.
func planEmbed(p Plan, v *fastjson.Value, body []byte) Plan {
	top := sortedMembers(v.GetObject())
	if err := checkDuplicateKeys(top); err != nil {
		return p.bypass(err.Error())
	}
	params, reason := embedParams(p.route, v)
	if reason != "" {
		return p.bypass(reason)
	}
	texts, single, reason := embedInputs(p.route, v)
	if reason != "" {
		return p.bypass(reason)
	}

	ep := &embedPlan{body: body, items: make([]embedItem, len(texts))}
	if !single {
		spans, ok := inputSpans(body, len(texts))
		if !ok {
			return p.bypass("input array not readable")
		}
		ep.input = spans[0]
		for i := range ep.items {
			ep.items[i].raw = spans[i+1]
		}
	}
	bp := getKeyBuf()
	buf := *bp
	family := embedFamily(p.route)
	for i, t := range texts {
		ep.items[i].key, buf = itemKey(buf, family, p.Model, params, t)
	}
	*bp = buf
	putKeyBuf(bp)

	key, err := responseKey(p.Route, p.Model, top, p.route.ignoredMember)
	if err != nil {
		return p.bypass(err.Error())
	}
	p.Kind = KindEmbed
	p.Key = key
	p.embed = ep
	return p
}

// inputSpans returns the span of the input array followed by the spans of
// its n elements.
func inputSpans(body []byte, n int) ([]span, bool) {
	in, ok := memberSpan(body, "input")
	if !ok {
		return nil, false
	}
	elems, ok := elementSpans(body, in)
	if !ok || len(elems) != n {
		return nil, false
	}
	return append([]span{in}, elems...), true
}

// embedParams returns the canonical form of the request members that change
// a vector, or the reason the request is not cached.
func embedParams(r route, v *fastjson.Value) ([]byte, string) {
	buf := []byte("truncate=")
	switch r {
	case routeEmbed:
		// Ollama truncates unless truncate is false.
		t := v.Get("truncate")
		switch {
		case t == nil || t.Type() == fastjson.TypeTrue:
			buf = append(buf, "true"...)
		case t.Type() == fastjson.TypeFalse:
			buf = append(buf, "false"...)
		default:
			return nil, "truncate is not a boolean"
		}
	case routeV1Embeddings:
		// Ollama's /v1 route always truncates and ignores options.
		f := v.Get("encoding_format")
		if f != nil && string(f.GetStringBytes()) != "float" {
			return nil, "encoding_format other than float"
		}
		buf = append(buf, "true"...)
	}
	options := v.Get("options")
	if r == routeV1Embeddings {
		options = nil
	}
	buf, err := appendParam(buf, ";dimensions=", v.Get("dimensions"))
	if err == nil {
		buf, err = appendParam(buf, ";options=", options)
	}
	if err != nil {
		return nil, err.Error()
	}
	return buf, ""
}

// appendParam appends name and the canonical value of v. A missing value,
// null, an empty object and 0 (a dimensions of 0 keeps every dimension)
// all mean the default, so they are written alike, as nothing.
func appendParam(buf []byte, name string, v *fastjson.Value) ([]byte, error) {
	buf = append(buf, name...)
	switch {
	case v == nil || v.Type() == fastjson.TypeNull:
		return buf, nil
	case v.Type() == fastjson.TypeObject && v.GetObject().Len() == 0:
		return buf, nil
	case v.Type() == fastjson.TypeNumber && v.GetFloat64() == 0:
		return buf, nil
	}
	return appendCanonical(buf, v)
}

// embedInputs returns the texts of an embedding request, whether they came
// as one string, or the reason the request is not cached. The texts refer
// to the parser's memory.
func embedInputs(r route, v *fastjson.Value) ([][]byte, bool, string) {
	name := "input"
	if r == routeEmbeddings {
		name = "prompt"
	}
	in := v.Get(name)
	if in == nil {
		return nil, false, "no " + name + ": a model load"
	}
	switch in.Type() {
	case fastjson.TypeString:
		s, _ := in.StringBytes()
		if len(s) == 0 {
			return nil, false, "empty " + name + ": a model load"
		}
		return [][]byte{s}, true, ""
	case fastjson.TypeArray:
		if r == routeEmbeddings {
			return nil, false, "prompt is not a string"
		}
		return embedArray(in.GetArray())
	}
	return nil, false, name + " is not text"
}

func embedArray(elems []*fastjson.Value) ([][]byte, bool, string) {
	if len(elems) == 0 {
		return nil, false, "empty input: a model load"
	}
	texts := make([][]byte, len(elems))
	for i, e := range elems {
		s, err := e.StringBytes()
		if err != nil {
			return nil, false, "input is not text"
		}
		if len(s) == 0 {
			return nil, false, "empty input item"
		}
		texts[i] = s
	}
	return texts, false, ""
}

// Batch is the state of one embedding request between LookupEmbeddings and
// StoreEmbeddings. It refers to the request body of its plan.
type Batch struct {
	plan    Plan
	vectors [][]byte // by input, nil while missing
	tokens  []int64  // prompt tokens by input, for the cached inputs
	sent    []int    // inputs sent upstream: the first of each missing text
	result  Result
	start   time.Time // start of the lookup
}

// Result returns the outcome of the lookup. It is ResultHitL1 when every
// input was in L1, and ResultHitL2 when every input was cached and some came
// from L2. It is ResultPartial when some inputs were cached and the others
// must be sent upstream, ResultMiss when no input was cached, and
// ResultBypass for a request with NoCache or a plan that is not KindEmbed.
func (b *Batch) Result() Result { return b.result }

// Missing returns the number of distinct inputs that UpstreamBody sends.
func (b *Batch) Missing() int { return len(b.sent) }

// Partial reports whether UpstreamBody contains only some of the inputs, so
// that the upstream response cannot be sent to the client as it is.
func (b *Batch) Partial() bool {
	return b.plan.embed != nil && len(b.sent) > 0 && len(b.sent) < len(b.plan.embed.items)
}

// Entry returns the whole response when every input was cached, or nil.
// Its total duration is the time since the lookup began, and its load
// duration is zero.
func (b *Batch) Entry() *Entry {
	if b.plan.embed == nil || len(b.sent) > 0 {
		return nil
	}
	return &Entry{route: b.plan.route, embed: &embedResponse{
		vectors:       b.vectors,
		tokens:        b.tokens,
		totalDuration: time.Since(b.start).Nanoseconds(),
	}}
}

// UpstreamBody returns the body to send upstream. That is the request body
// itself when every input is missing once, and otherwise a copy in which the
// input array contains only the missing inputs, each once, and every other
// byte is unchanged. It returns nil when nothing is missing or the plan is
// not KindEmbed.
func (b *Batch) UpstreamBody() []byte {
	ep := b.plan.embed
	switch {
	case ep == nil || len(b.sent) == 0:
		return nil
	case len(b.sent) == len(ep.items):
		return ep.body
	}
	out := make([]byte, 0, len(ep.body))
	out = append(out, ep.body[:ep.input.start]...)
	out = append(out, '[')
	for j, i := range b.sent {
		if j > 0 {
			out = append(out, ',')
		}
		s := ep.items[i].raw
		out = append(out, ep.body[s.start:s.end]...)
	}
	out = append(out, ']')
	return append(out, ep.body[ep.input.end:]...)
}

// LookupEmbeddings looks up each input of a KindEmbed plan, in L1 and then
// in L2, and copies what L2 returned into L1. It counts one CacheRequests
// per input in L1 and per distinct input missing from L1 in L2, or one
// bypass for the request.
func (c *Cache) LookupEmbeddings(ctx context.Context, p Plan) *Batch {
	b := &Batch{plan: p, result: ResultBypass, start: time.Now()}
	if p.Kind != KindEmbed {
		c.countBypass()
		return b
	}
	b.vectors = make([][]byte, len(p.embed.items))
	b.tokens = make([]int64, len(p.embed.items))
	if p.NoCache {
		c.countBypass()
	} else {
		b.result = c.lookupItems(ctx, p, b.vectors, b.tokens)
	}

	seen := make(map[string]bool, len(p.embed.items))
	for i, it := range p.embed.items {
		if b.vectors[i] == nil && !seen[it.key] {
			seen[it.key] = true
			b.sent = append(b.sent, i)
		}
	}
	return b
}

// lookupItems fills vectors and tokens with the cached inputs of p and
// returns the result of the lookup.
func (c *Cache) lookupItems(ctx context.Context, p Plan, vectors [][]byte, tokens []int64) Result {
	var missed []string
	seen := make(map[string]bool)
	for i, it := range p.embed.items {
		if rec, ok := c.l1.get(it.key); ok && rec.vector != nil {
			vectors[i], tokens[i] = rec.vector, rec.tokens
			c.count(tierL1, outcomeHit)
			continue
		}
		c.count(tierL1, outcomeMiss)
		if !seen[it.key] {
			seen[it.key] = true
			missed = append(missed, it.key)
		}
	}
	if len(missed) == 0 {
		return ResultHitL1
	}

	found := c.l2GetMany(ctx, missed, p.Model, p.epoch)
	for i, it := range p.embed.items {
		if vectors[i] != nil {
			continue
		}
		if rec := found[it.key]; rec != nil && rec.vector != nil {
			vectors[i], tokens[i] = rec.vector, rec.tokens
		}
	}
	cached := 0
	for _, v := range vectors {
		if v != nil {
			cached++
		}
	}
	switch cached {
	case len(vectors):
		return ResultHitL2
	case 0:
		return ResultMiss
	}
	return ResultPartial
}

// StoreEmbeddings reads the upstream response to b.UpstreamBody(), stores
// the new vectors with their prompt token counts (unless the plan has
// NoStore) and returns the whole response, every input in request order,
// to render with Entry.Render. Like Store, it stores nothing when this
// instance applied a purge of the model since the plan was made. Its token
// count is the sum over all inputs, cached or not, and its durations are
// upstream's. Call it only for a 200 response. It returns an error
// wrapping ErrInvalidResponse when the response cannot be read or contains
// a number of vectors other than the number of inputs sent, and nothing is
// stored then. It copies what it keeps from upstream.
func (c *Cache) StoreEmbeddings(ctx context.Context, b *Batch, upstream []byte) (*Entry, error) {
	if b.plan.Kind != KindEmbed {
		return nil, ErrNotCacheable
	}
	vectors, usage, err := parseEmbedResponse(b.plan.route, upstream)
	if err != nil {
		return nil, err
	}
	if len(vectors) != len(b.sent) {
		return nil, fmt.Errorf("%w: %d embeddings for %d inputs",
			ErrInvalidResponse, len(vectors), len(b.sent))
	}

	items := b.plan.embed.items
	weights := make([]int64, len(b.sent))
	for j, i := range b.sent {
		weights[j] = int64(items[i].raw.end - items[i].raw.start)
	}
	counts := splitTokens(usage.promptTokens, weights)

	type computed struct {
		vector []byte
		tokens int64
	}
	fresh := make(map[string]computed, len(b.sent))
	records := make([]*record, 0, len(b.sent))
	for j, i := range b.sent {
		fresh[items[i].key] = computed{vectors[j], counts[j]}
		records = append(records, newVectorRecord(items[i].key, b.plan.Model, vectors[j], counts[j]))
	}
	all := make([][]byte, len(items))
	tokens := make([]int64, len(items))
	for i, it := range items {
		all[i], tokens[i] = b.vectors[i], b.tokens[i]
		if all[i] == nil {
			all[i], tokens[i] = fresh[it.key].vector, fresh[it.key].tokens
		}
	}
	if !b.plan.NoStore {
		c.putUnlessPurged(ctx, b.plan.Model, b.plan.epoch, records...)
	}
	return &Entry{route: b.plan.route, embed: &embedResponse{
		vectors:       all,
		tokens:        tokens,
		totalDuration: usage.totalDuration,
		loadDuration:  usage.loadDuration,
	}}, nil
}

// splitTokens divides total, the prompt tokens upstream counted for a batch
// of inputs, among the inputs by their weights (their lengths in the
// request body), so that the parts add up to total. Each input gets at
// least one token when total allows it, since a non-empty input tokenizes
// to at least one token. The largest remainders get the tokens left over
// by rounding down.
//
// NOTE: upstream reports only the batch's total, so the count of one input
// of a batch of several is an estimate. A later response's count is exact
// when it contains each such batch's inputs once each or not at all.
func splitTokens(total int64, weights []int64) []int64 {
	out := make([]int64, len(weights))
	n := int64(len(weights))
	if n == 0 || total <= 0 {
		return out
	}
	if n == 1 {
		out[0] = total
		return out
	}

	var base int64
	if total >= n {
		base = 1
	}
	rest := total - base*n
	var sum int64
	for _, w := range weights {
		sum += max(w, 1)
	}

	remainders := make([]int64, n)
	left := rest
	for i, w := range weights {
		share := rest * max(w, 1)
		out[i] = base + share/sum
		remainders[i] = share % sum
		left -= share / sum
	}

	for ; left > 0; left-- {
		largest := 0
		for i, r := range remainders {
			if r > remainders[largest] {
				largest = i
			}
		}
		out[largest]++
		remainders[largest] = -1
	}
	return out
}
