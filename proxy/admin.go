package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/pprofhandler"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
	"github.com/llmproxy/llmproxy/metrics"
	"github.com/llmproxy/llmproxy/statuspage"
)

// nodeStatus is one node in GET /admin/nodes.
type nodeStatus struct {
	Name          string   `json:"name"`
	URL           string   `json:"url"`
	State         string   `json:"state"`
	Breaker       string   `json:"breaker"`
	Inflight      int64    `json:"inflight"`
	MaxConcurrent int      `json:"max_concurrent"`
	Models        []string `json:"models"`
	LoadedModels  []string `json:"loaded_models"`
	Version       string   `json:"version"`
	LastError     string   `json:"last_error"`
}

// serveAdmin serves the admin routes. Every route except the status page
// requires admin.token when it is set.
func (s *Server) serveAdmin(ctx *fasthttp.RequestCtx, rt route) {
	path := string(ctx.Path())
	method := string(ctx.Method())
	// The page contains no data, and a browser cannot send a bearer token
	// when it opens a page. The page sends the token on its own requests.
	if (path == "/admin" || path == "/admin/") && (method == "GET" || method == "HEAD") {
		statuspage.Page(ctx)
		return
	}
	if !s.adminAuthorized(ctx) {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="llmproxy admin"`)
		writeError(ctx, rt, fasthttp.StatusUnauthorized, "admin token required")
		return
	}
	switch {
	case path == "/admin/status" && (method == "GET" || method == "HEAD"):
		s.statusJSON(ctx)
	case path == "/admin/nodes" && method == "GET":
		s.serveNodes(ctx)
	case strings.HasPrefix(path, "/admin/debug/pprof") && s.profilesServed():
		ctx.URI().SetPath(strings.TrimPrefix(path, "/admin"))
		pprofhandler.PprofHandler(ctx)
	case path == "/admin/cache/purge" && method == "POST":
		s.servePurge(ctx, rt)
	case path == "/admin/usage" && method == "GET":
		s.serveUsage(ctx, rt)
	case path == "/admin/queue" && method == "GET":
		writeJSON(ctx, map[string]any{"depth": s.bal.Depth(), "waiting": s.bal.Waiting()})
	case strings.HasPrefix(path, "/admin/nodes/") && method == "POST":
		s.serveNodeAction(ctx, rt)
	default:
		if s.adminExtra != nil && s.adminExtra(ctx) {
			return
		}
		if allow := adminMethods(path); allow != "" {
			ctx.Response.Header.Set("Allow", allow)
			writeError(ctx, rt, fasthttp.StatusMethodNotAllowed,
				"method "+method+" is not allowed on "+path+", use "+allow)
			return
		}
		writeError(ctx, rt, fasthttp.StatusNotFound, "unknown admin route "+method+" "+path)
	}
}

// adminMethods returns the methods that serveAdmin serves on path, as the
// value of an Allow header, or "" for a path that it does not serve.
func adminMethods(path string) string {
	switch {
	case path == "/admin/status":
		return "GET, HEAD"
	case path == "/admin/nodes", path == "/admin/usage", path == "/admin/queue":
		return "GET"
	case path == "/admin/cache/purge", strings.HasPrefix(path, "/admin/nodes/"):
		return "POST"
	}
	return ""
}

// redisDegraded describes how each component that uses Redis works while
// it cannot reach Redis.
var redisDegraded = map[string]string{
	metrics.RedisRateLimit: "rate limits and quotas are counted by each instance alone",
	metrics.RedisCache:     "the response cache uses the in-process tier only",
}

// redisStatus returns the status of Redis from whether each component
// reached it at its last check, or nil when no component uses Redis.
func redisStatus(components map[string]bool) *statuspage.RedisStatus {
	if components == nil {
		return nil
	}
	st := &statuspage.RedisStatus{Up: true, Degraded: []string{}}
	for _, name := range slices.Sorted(maps.Keys(components)) {
		if components[name] {
			continue
		}
		st.Up = false
		msg, ok := redisDegraded[name]
		if !ok {
			msg = name + " cannot reach Redis"
		}
		st.Degraded = append(st.Degraded, msg)
	}
	return st
}

// profilesServed reports whether the Go runtime profiles under
// /admin/debug/pprof are served: only with admin.token set, or on the
// listener of admin.listen. Without either, the admin routes are open to
// every client of the proxy, and the profiles would show any client the
// command line and the stack of every goroutine, and let it start CPU
// profiles and execution traces.
func (s *Server) profilesServed() bool {
	cfg := s.config()
	return cfg.Admin.Token != "" || cfg.Admin.Listen != ""
}

func (s *Server) adminAuthorized(ctx *fasthttp.RequestCtx) bool {
	token := s.config().Admin.Token
	if token == "" {
		return true
	}
	auth := ctx.Request.Header.Peek("Authorization")
	// The scheme is case-insensitive (RFC 9110, section 11.1).
	scheme, got, ok := strings.Cut(string(auth), " ")
	ok = ok && strings.EqualFold(scheme, "Bearer")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// NodeStatuses returns the state of every node, as GET /admin/nodes shows.
func (s *Server) NodeStatuses() []nodeStatus {
	var out []nodeStatus
	for _, n := range s.bal.Nodes() {
		st := nodeStatus{
			Name:          n.Name,
			URL:           n.URL.String(),
			State:         nodeState(n),
			Breaker:       "closed",
			Inflight:      n.Inflight(),
			MaxConcurrent: n.MaxConcurrent(),
			Version:       n.Version(),
			LastError:     n.LastError(),
			Models:        []string{},
			LoadedModels:  []string{},
		}
		if s.breakerState != nil {
			st.Breaker = s.breakerState(n)
		}
		for _, m := range n.Models() {
			st.Models = append(st.Models, m.Name)
		}
		for _, m := range n.LoadedModels() {
			st.LoadedModels = append(st.LoadedModels, m.Name)
		}
		out = append(out, st)
	}
	return out
}

// nodeState returns the node's state for GET /admin/nodes and the status
// page. It is "up" exactly when the node takes new requests (Node.Usable),
// which is also when llmproxy_node_up is 1. A node that passes its probes
// but that its breaker or passive checks keep out is "ejected", or
// "restricted" while it still takes the requests for the models that no
// usable node lists.
func nodeState(n *balancer.Node) string {
	switch {
	case n.Draining():
		return "draining"
	case !n.Up():
		return "down"
	case n.Restricted():
		return "restricted"
	case !n.Usable():
		return "ejected"
	default:
		return "up"
	}
}

func (s *Server) serveNodes(ctx *fasthttp.RequestCtx) {
	writeJSON(ctx, map[string]any{"nodes": s.NodeStatuses()})
}

// serveNodeAction serves POST /admin/nodes/{name}/{action}. It reads the
// name and action from the path as the client sent it, decoded: fasthttp's
// path decodes %2F and then removes dot segments, which would turn the
// name n1%2F..%2Fn2 into n2.
func (s *Server) serveNodeAction(ctx *fasthttp.RequestCtx, rt route) {
	path, err := url.PathUnescape(string(ctx.URI().PathOriginal()))
	if err != nil {
		writeError(ctx, rt, fasthttp.StatusBadRequest, "invalid path: "+err.Error())
		return
	}
	rest, _ := strings.CutPrefix(path, "/admin/nodes/")
	name, action, ok := strings.Cut(rest, "/")
	n := s.bal.Node(name)
	if !ok || n == nil {
		writeError(ctx, rt, fasthttp.StatusNotFound, "unknown node "+quote(name))
		return
	}
	switch action {
	case "drain":
		n.SetDraining(true)
	case "undrain":
		n.SetDraining(false)
	default:
		writeError(ctx, rt, fasthttp.StatusNotFound, "unknown node action "+quote(action))
		return
	}
	s.log.Info("node drain changed", "node", n.Name, "draining", n.Draining())
	writeJSON(ctx, map[string]any{"node": n.Name, "draining": n.Draining(), "inflight": n.Inflight()})
}

func writeJSON(ctx *fasthttp.RequestCtx, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(ctx, route{}, fasthttp.StatusInternalServerError, err.Error())
		return
	}
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(b)
}

// servePurge empties the response cache, whole or for the model named by
// the "model" query parameter or JSON body field.
func (s *Server) servePurge(ctx *fasthttp.RequestCtx, rt route) {
	if s.cache == nil {
		writeError(ctx, rt, fasthttp.StatusNotFound, "the response cache is disabled")
		return
	}
	model := string(ctx.QueryArgs().Peek("model"))
	if model == "" && len(ctx.PostBody()) > 0 {
		var body struct {
			Model string `json:"model"`
		}
		if err := json.Unmarshal(ctx.PostBody(), &body); err != nil {
			writeError(ctx, rt, fasthttp.StatusBadRequest, "invalid JSON: "+err.Error())
			return
		}
		model = body.Model
	}
	if model != "" {
		model = wire.ModelKey(model)
	}
	if err := s.cache.Purge(context.Background(), model); err != nil {
		// The in-process tier is purged even when Redis fails.
		writeError(ctx, rt, fasthttp.StatusBadGateway, "purge the shared cache: "+err.Error())
		return
	}
	s.log.Info("cache purged", "model", model)
	writeJSON(ctx, map[string]any{"purged": true, "model": model})
}

// serveUsage lists each key's usage this month and its limits.
func (s *Server) serveUsage(ctx *fasthttp.RequestCtx, rt route) {
	lim := s.limiter()
	if lim == nil {
		writeJSON(ctx, map[string]any{"keys": []any{}})
		return
	}
	writeJSON(ctx, map[string]any{"keys": lim.Usage(context.Background())})
}

// statusSnapshot returns the data that the status page shows.
func (s *Server) statusSnapshot() statuspage.Snapshot {
	snap := statuspage.Snapshot{
		Version:       s.version,
		UptimeSeconds: time.Since(s.started).Seconds(),
		Time:          time.Now(),
		QueueDepth:    s.bal.Depth(),
		RecentErrors:  s.recentErrors.List(),
	}
	if s.m != nil {
		snap.Cache = statuspage.CacheStatsFrom(s.m.CacheRequests)
		snap.Redis = redisStatus(s.m.RedisComponents())
	}
	for _, n := range s.NodeStatuses() {
		snap.Nodes = append(snap.Nodes, statuspage.NodeStatus{
			Name:            n.Name,
			URL:             n.URL,
			State:           n.State,
			Breaker:         n.Breaker,
			Inflight:        n.Inflight,
			MaxConcurrent:   n.MaxConcurrent,
			LoadedModels:    n.LoadedModels,
			TokensPerSecond: s.bal.NodeTokensPerSecond(n.Name),
			LastError:       n.LastError,
		})
	}
	return snap
}
