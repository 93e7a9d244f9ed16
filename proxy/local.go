package proxy

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// listTimeout is the maximum wait for one node's response to a GET that
// the proxy sends to every usable node. A node may stop responding some
// probes before health checks mark it down. Until then, a listing uses
// what its last inventory refresh stored (see lastKnownList), so such a
// node delays the listing by at most listTimeout.
const listTimeout = time.Second

// nodeResponse is one node's response to a request sent to several nodes.
type nodeResponse struct {
	node   *balancer.Node
	status int
	body   []byte
	err    error
}

// getAll sends GET path to every node that takes requests, restricted
// nodes included, concurrently and returns their responses in node order.
// The model lists then keep the models that only a restricted node serves.
func (s *Server) getAll(ctx context.Context, path string) []nodeResponse {
	nodes := s.bal.Serving()
	out := make([]nodeResponse, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = s.getOne(ctx, n, path)
		}()
	}
	wg.Wait()
	return out
}

func (s *Server) getOne(ctx context.Context, n *balancer.Node, path string) nodeResponse {
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod("GET")
	req.SetRequestURI(path)
	cfg := s.config()
	t := timeouts{connect: min(cfg.Upstream.Connect, listTimeout), firstByte: listTimeout,
		idle: listTimeout}
	ex, err := s.upstreamFor(n).send(ctx, req, t)
	if err != nil {
		return nodeResponse{node: n, err: err}
	}
	status := ex.resp.StatusCode()
	body, err := ex.readAll(64 << 20)
	if err != nil {
		ex.close()
		return nodeResponse{node: n, err: err}
	}
	ex.finish()
	return nodeResponse{node: n, status: status, body: body}
}

// serveVersion responds with the lowest version among usable nodes, so
// that a client does not rely on a feature that some node lacks.
func (s *Server) serveVersion(ctx *fasthttp.RequestCtx, rt route) {
	var lowest string
	for _, a := range s.getAll(context.Background(), "/api/version") {
		var v string
		switch {
		case a.err != nil:
			// The version last stored for the node, by a probe or an
			// earlier /api/version.
			v = a.node.Version()
		case a.status != 200:
			continue
		default:
			v = fastjson.GetString(a.body, "version")
			a.node.SetVersion(v)
		}
		if v != "" && (lowest == "" || wire.CompareVersions(v, lowest) < 0) {
			lowest = v
		}
	}
	if lowest == "" {
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node responded")
		return
	}
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBodyString(`{"version":` + strconv.Quote(lowest) + `}`)
}

// serveTags responds with the union of the nodes' model lists, with one
// entry per model as the first node that lists it sent it, and only the
// models the request's key may use. The most recently modified model comes
// first, as in Ollama's list.
func (s *Server) serveTags(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	entries, ok := s.mergeLists("/api/tags", "", "modified_at", rs)
	if !ok {
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node responded")
		return
	}
	writeModelList(ctx, entries)
}

// servePS responds with the union of the models loaded on the nodes, with
// one entry per model: the entry that expires last. It lists only the
// models the request's key may use. The model that expires last comes
// first, as Ollama lists them.
func (s *Server) servePS(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	entries, ok := s.mergeLists("/api/ps", "expires_at", "expires_at", rs)
	if !ok {
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node responded")
		return
	}
	writeModelList(ctx, entries)
}

type listEntry struct {
	name string
	raw  []byte
	// rank is the parsed rank field, compared when two nodes list the same
	// model. ranked is false when the field is missing or does not parse.
	rank   time.Time
	ranked bool
}

// mergeLists fetches a {"models":[...]} list from every usable node, merges
// them with mergeModelLists, keeps the models that the key of rs may use and
// orders the result with sortLatestFirst by orderField. The bool reports
// whether any node responded with a valid list. Each call fetches and merges
// anew, so no request gets another key's list.
func (s *Server) mergeLists(path, rankField, orderField string, rs *reqState) ([]listEntry, bool) {
	responses := s.getAll(context.Background(), path)
	bodies := make([][]byte, 0, len(responses))
	for _, a := range responses {
		switch {
		case a.err != nil:
			if body := lastKnownList(a.node, path); body != nil {
				bodies = append(bodies, body)
			}
		case a.status == 200:
			bodies = append(bodies, a.body)
		}
	}
	entries, ok := mergeModelLists(bodies, rankField)
	entries = slices.DeleteFunc(entries, func(e listEntry) bool { return !keyAllows(rs, e.name) })
	sortLatestFirst(entries, orderField)
	return entries, ok
}

// lastKnownList builds the {"models":[...]} list at path (/api/tags or
// /api/ps) of a node that sent no response. It uses the entries that the
// node's last inventory refresh stored, and returns nil when that list
// was never fetched. A model that the proxy marked loaded since the
// refresh has no entry as the node sent it, and is left out.
func lastKnownList(n *balancer.Node, path string) []byte {
	var entries [][]byte
	switch {
	case path == "/api/tags" && n.ModelsListed():
		for _, m := range n.Models() {
			entries = append(entries, m.Raw)
		}
	case path == "/api/ps" && n.LoadedKnown():
		for _, l := range n.LoadedModels() {
			entries = append(entries, l.Raw)
		}
	default:
		return nil
	}
	b := []byte(`{"models":[`)
	first := true
	for _, raw := range entries {
		if len(raw) == 0 {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, raw...)
	}
	return append(b, "]}"...)
}

// mergeModelLists keeps one entry per model name from the {"models":[...]}
// lists in bodies, sorted by name. With rankField set, the entry whose
// field contains the latest RFC 3339 time wins, and an entry whose field is
// missing or does not parse loses to any that parses. Without rankField, or
// between equal ranks, the entry of the earliest body wins. The bool
// reports whether any body is valid JSON.
func mergeModelLists(bodies [][]byte, rankField string) ([]listEntry, bool) {
	byName := map[string]listEntry{}
	valid := false
	var p fastjson.Parser
	for _, body := range bodies {
		v, err := p.ParseBytes(body)
		if err != nil {
			continue
		}
		valid = true
		for _, m := range v.GetArray("models") {
			e := listEntry{name: string(m.GetStringBytes("name"))}
			e.raw = m.MarshalTo(nil)
			if rankField != "" {
				t, err := time.Parse(time.RFC3339Nano, string(m.GetStringBytes(rankField)))
				e.rank, e.ranked = t, err == nil
			}
			// Ollama matches names without regard to case, so two nodes'
			// spellings of one model are one entry.
			key := wire.ModelKey(e.name)
			old, seen := byName[key]
			if !seen || (rankField != "" && ranksAbove(e, old)) {
				byName[key] = e
			}
		}
	}
	out := make([]listEntry, 0, len(byName))
	for _, e := range byName {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, valid
}

// sortLatestFirst orders entries by the RFC 3339 time in field, latest
// first, as Ollama orders /api/ps by expires_at and /api/tags by
// modified_at (PsHandler and ListHandler in its server/routes.go). Times
// compare as instants, so zone offsets and fraction lengths do not matter.
// Entries whose field is missing or does not parse come last, and entries
// with equal times, or none, are in name order.
//
// NOTE: Ollama compares whole seconds and leaves models within one second
// in map order, which can change from one request to the next. Comparing
// the full time gives one of the orders Ollama can send, and the order the
// simulator in package ollamasim sends.
func sortLatestFirst(entries []listEntry, field string) {
	keyed := make([]timedEntry, len(entries))
	var p fastjson.Parser
	for i, e := range entries {
		keyed[i].entry = e
		v, err := p.ParseBytes(e.raw)
		if err != nil {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, string(v.GetStringBytes(field)))
		keyed[i].time, keyed[i].valid = t, err == nil
	}
	slices.SortFunc(keyed, compareLatestFirst)
	for i := range keyed {
		entries[i] = keyed[i].entry
	}
}

// timedEntry is a merged entry with the time it is ordered by. valid is
// false when the entry has no time that parses.
type timedEntry struct {
	entry listEntry
	time  time.Time
	valid bool
}

func compareLatestFirst(a, b timedEntry) int {
	switch {
	case a.valid && !b.valid:
		return -1
	case !a.valid && b.valid:
		return 1
	}
	if c := b.time.Compare(a.time); c != 0 {
		return c
	}
	return strings.Compare(a.entry.name, b.entry.name)
}

// ranksAbove reports whether a has a later rank than b. Times compare as
// instants, so zone offsets and fraction lengths do not matter.
func ranksAbove(a, b listEntry) bool {
	if !a.ranked {
		return false
	}
	return !b.ranked || a.rank.After(b.rank)
}

func writeModelList(ctx *fasthttp.RequestCtx, entries []listEntry) {
	b := make([]byte, 0, 256*len(entries)+16)
	b = append(b, `{"models":[`...)
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.raw...)
	}
	b = append(b, "]}"...)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(b)
}

// serveOpenAIModels serves GET /v1/models and /v1/models/{model} from the
// merged model list, in OpenAI's shape as Ollama builds it. The list has
// the order of /api/tags, because Ollama converts its /api/tags response.
// A model that the request's key may not use is left out of the list and
// gets the 404 of an unknown model, so the response does not confirm that
// it exists.
func (s *Server) serveOpenAIModels(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	entries, ok := s.mergeLists("/api/tags", "", "modified_at", rs)
	if !ok {
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node responded")
		return
	}
	var p fastjson.Parser
	ctx.SetContentType("application/json")
	if rt.how == handleModel {
		want := strings.TrimPrefix(string(ctx.Path()), "/v1/models/")
		key := wire.ModelKey(want)
		for _, e := range entries {
			if wire.ModelKey(e.name) == key {
				v, _ := p.ParseBytes(e.raw)
				ctx.SetBody(appendOpenAIModel(nil, want, v))
				return
			}
		}
		writeModelNotFound(ctx, rt, nil, want)
		return
	}
	b := []byte(`{"object":"list","data":[`)
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		v, _ := p.ParseBytes(e.raw)
		b = appendOpenAIModel(b, e.name, v)
	}
	ctx.SetBody(append(b, "]}"...))
}

func appendOpenAIModel(b []byte, id string, v *fastjson.Value) []byte {
	var created int64
	if v != nil {
		if t, err := time.Parse(time.RFC3339Nano, string(v.GetStringBytes("modified_at"))); err == nil {
			created = t.Unix()
		}
	}
	b = append(b, `{"id":`...)
	b = strconv.AppendQuote(b, id)
	b = append(b, `,"object":"model","created":`...)
	b = strconv.AppendInt(b, created, 10)
	b = append(b, `,"owned_by":`...)
	b = strconv.AppendQuote(b, wire.ModelNamespace(id))
	return append(b, '}')
}

func quote(s string) string { return strconv.Quote(s) }

func itoa(n int) string { return strconv.Itoa(n) }
