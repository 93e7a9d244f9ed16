package cache

import (
	"time"

	"github.com/valyala/fastjson"
)

// Kind is the way the cache treats a request.
type Kind uint8

const (
	// KindNone is a request the cache does not serve or store: the proxy
	// forwards it as it is. Plan.Reason gives the reason.
	KindNone Kind = iota
	// KindResponse is a generation request whose whole response is cached under
	// Plan.Key: use Lookup, Do and Store.
	KindResponse
	// KindEmbed is an embedding request whose inputs are cached one by one:
	// use LookupEmbeddings, Do and StoreEmbeddings.
	KindEmbed
)

// route identifies one of the routes whose responses can be cached.
type route uint8

const (
	routeUnknown route = iota
	routeGenerate
	routeChat
	routeV1Chat
	routeV1Completions
	routeEmbed
	routeEmbeddings
	routeV1Embeddings
)

var routes = map[string]route{
	"/api/generate":        routeGenerate,
	"/api/chat":            routeChat,
	"/v1/chat/completions": routeV1Chat,
	"/v1/completions":      routeV1Completions,
	"/api/embed":           routeEmbed,
	"/api/embeddings":      routeEmbeddings,
	"/v1/embeddings":       routeV1Embeddings,
}

// isV1 reports whether r is one of Ollama's OpenAI-compatible routes.
func (r route) isV1() bool {
	return r == routeV1Chat || r == routeV1Completions || r == routeV1Embeddings
}

func (r route) isEmbedding() bool {
	return r == routeEmbed || r == routeEmbeddings || r == routeV1Embeddings
}

// ignoredMember reports whether the top-level member key never changes the
// response of r, so it stays out of the key: stream and stream_options only
// change the delivery, keep_alive only how long the model stays loaded.
func (r route) ignoredMember(key string) bool {
	switch key {
	case "stream", "keep_alive":
		return true
	case "stream_options":
		return r.isV1()
	}
	return false
}

// Request contains the parts of an incoming request that Classify reads.
type Request struct {
	// Route is the URL path, for example "/api/chat".
	Route string
	// Body is the raw request body. Classify does not keep it, except that a
	// KindEmbed plan refers to it until the proxy has built the upstream
	// body with Batch.UpstreamBody.
	Body []byte
	// NoCache skips the lookup but still lets the response be stored: the
	// Cache-Control request directive no-cache.
	NoCache bool
	// NoStore keeps the response out of the cache: the Cache-Control request
	// directive no-store.
	NoStore bool
	// KeyName is the name of the request's API key, or "". With
	// cache.per_key it selects the key's own set of entries.
	KeyName string
}

// Plan is the result of Classify: whether and how a request is cached. A
// Plan is a value that the proxy passes back to the other methods.
type Plan struct {
	// Kind is the way the request is cached. KindNone means not at all.
	Kind Kind
	// Route is Request.Route.
	Route string
	// Model is the normalized model name (see NormalizeModel), empty when
	// the body names none.
	Model string
	// Key identifies the response: the hex SHA-256 of the route and the
	// canonical body. For KindEmbed it identifies the whole request and
	// serves to coalesce identical requests. Empty for KindNone.
	Key string
	// Stream is true when the client requested a streamed response: on
	// /api routes unless the body sets "stream": false, on /v1 routes when
	// it sets "stream": true.
	Stream bool
	// IncludeUsage is true when a /v1 streaming request sets
	// stream_options.include_usage.
	IncludeUsage bool
	// NoCache and NoStore are copied from the Request.
	NoCache, NoStore bool
	// Reason gives the reason Kind is KindNone, for debug logs.
	Reason string

	route        route
	requestModel string // the model name as the client sent it
	embed        *embedPlan
	// epoch is purgeEpochs.current when Classify made the plan. Store and
	// StoreEmbeddings skip the response when a purge of Model began since.
	epoch uint64
}

// Cacheable reports whether the plan's Kind is other than KindNone.
func (p Plan) Cacheable() bool { return p.Kind != KindNone }

func (p Plan) bypass(reason string) Plan {
	p.Kind = KindNone
	p.Key = ""
	p.embed = nil
	p.Reason = reason
	return p
}

// parsers holds the JSON parsers of Classify and StoreEmbeddings.
var parsers fastjson.ParserPool

// maxPooledParse is the largest JSON document whose parser goes back to
// parsers. A parser keeps a copy of the last document it parsed, so a
// pooled one that parsed a 50 MB body would hold 50 MB while idle.
const maxPooledParse = 1 << 20

// releaseParser returns p, which parsed a document of size bytes, to
// parsers, or leaves it to the garbage collector after a large document.
func releaseParser(p *fastjson.Parser, size int) {
	if size <= maxPooledParse {
		parsers.Put(p)
	}
}

// Classify decides whether a request is cached, and computes its keys. It
// has no error result, because a body that it cannot read or does not
// cache gets KindNone.
//
// Embedding requests are cached whatever their options, unless their input
// is token arrays or /v1 requests base64 vectors. Generation requests are
// cached only when their response is deterministic, and never with
// cache.generate "never". Deterministic means options.temperature 0, or
// options.seed other than -1 (which Ollama treats as random), and on /v1
// the top-level temperature and seed. No request is cached that only loads
// a model (no prompt, input or messages), sets keep_alive to 0, or has two
// keys that differ only in case.
//
// Classify marks the start of the request for the purges of its model:
// call it before the request goes to a node, and make a new plan for each
// request.
func (c *Cache) Classify(req Request) Plan {
	p := Plan{
		Route:   req.Route,
		NoCache: req.NoCache,
		NoStore: req.NoStore,
		route:   routes[req.Route],
		epoch:   c.epochs.current(),
	}
	p.Stream = p.route == routeGenerate || p.route == routeChat
	switch {
	case !c.enabled:
		return p.bypass("cache disabled")
	case p.route == routeUnknown:
		return p.bypass("route not cacheable")
	}

	parser := parsers.Get()
	defer releaseParser(parser, len(req.Body))
	v, err := parser.ParseBytes(req.Body)
	if err != nil || v.Type() != fastjson.TypeObject {
		return p.bypass("body is not a JSON object")
	}
	p.readDelivery(v)

	model := v.GetStringBytes("model")
	if len(model) == 0 {
		return p.bypass("missing model")
	}
	p.requestModel = string(model)
	p.Model = NormalizeModel(p.requestModel)
	if unloadsModel(v.Get("keep_alive")) {
		return p.bypass("keep_alive 0 unloads the model")
	}

	if p.route.isEmbedding() {
		p = planEmbed(p, v, req.Body)
	} else {
		p = c.planResponse(p, v)
	}
	if p.Kind == KindNone {
		return p
	}
	if reason := invalidMember(p.route, v); reason != "" {
		// The node responds with its own error, which is not cached. Only
		// requests the cache would serve are checked, to spare the others.
		return p.bypass(reason)
	}
	if c.perKey {
		p.scope(req.KeyName)
	}
	return p
}

// scope moves the plan's keys into the set of entries of the API key
// named name, where "" is the set of requests without a key.
func (p *Plan) scope(name string) {
	p.Key = scopedKey(name, p.Key)
	if p.embed != nil {
		for i := range p.embed.items {
			p.embed.items[i].key = scopedKey(name, p.embed.items[i].key)
		}
	}
}

// readDelivery reads the members that choose between a stream and a single
// object.
func (p *Plan) readDelivery(v *fastjson.Value) {
	s := v.Get("stream")
	switch {
	case p.route.isEmbedding():
		p.Stream = false
	case p.route.isV1():
		p.Stream = s != nil && s.Type() == fastjson.TypeTrue
		p.IncludeUsage = p.Stream &&
			v.Get("stream_options", "include_usage") != nil &&
			v.Get("stream_options", "include_usage").Type() == fastjson.TypeTrue
	default:
		p.Stream = s == nil || s.Type() != fastjson.TypeFalse
	}
}

func (c *Cache) planResponse(p Plan, v *fastjson.Value) Plan {
	if c.generateNever {
		return p.bypass("generation caching is off (cache.generate: never)")
	}
	if reason := loadOnlyReason(p.route, v); reason != "" {
		return p.bypass(reason)
	}
	if !deterministic(p.route, v) {
		return p.bypass("not deterministic: needs temperature 0 or a seed")
	}
	key, err := responseKey(p.Route, p.Model, sortedMembers(v.GetObject()), p.route.ignoredMember)
	if err != nil {
		return p.bypass(err.Error())
	}
	p.Kind = KindResponse
	p.Key = key
	return p
}

// loadOnlyReason returns why a generation request has no prompt to reply
// to, or "" when it has a prompt or messages. Ollama only loads the model
// for a request without them.
func loadOnlyReason(r route, v *fastjson.Value) string {
	switch r {
	case routeGenerate, routeV1Completions:
		p := v.Get("prompt")
		if p == nil || (p.Type() == fastjson.TypeString && len(p.GetStringBytes()) == 0) {
			return "no prompt: a model load"
		}
	case routeChat, routeV1Chat:
		if len(v.GetArray("messages")) == 0 {
			return "no messages: a model load"
		}
	}
	return ""
}

// deterministic reports whether the request fixes the sampling: a
// temperature of 0, or a seed other than -1 (Ollama's "random").
func deterministic(r route, v *fastjson.Value) bool {
	params := v
	if !r.isV1() {
		params = v.Get("options")
	}
	if params == nil || params.Type() != fastjson.TypeObject {
		return false
	}
	if t := params.Get("temperature"); t != nil && t.Type() == fastjson.TypeNumber {
		if f, err := t.Float64(); err == nil && f == 0 {
			return true
		}
	}
	if s := params.Get("seed"); s != nil && s.Type() == fastjson.TypeNumber {
		if f, err := s.Float64(); err == nil && f != -1 {
			return true
		}
	}
	return false
}

// unloadsModel reports whether keep_alive is zero, as Ollama reads it: a
// number of seconds or a Go duration string.
func unloadsModel(v *fastjson.Value) bool {
	if v == nil {
		return false
	}
	switch v.Type() {
	case fastjson.TypeNumber:
		f, err := v.Float64()
		return err == nil && f >= 0 && time.Duration(f*float64(time.Second)) == 0
	case fastjson.TypeString:
		d, err := time.ParseDuration(string(v.GetStringBytes()))
		return err == nil && d == 0
	}
	return false
}
