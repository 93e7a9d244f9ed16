package proxy

import (
	"strings"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// serveSticky serves model creation: blob uploads and the create that
// uses them must reach one node, so each client address is pinned to one
// usable node by rendezvous hashing. A create from a base model is pinned
// among the nodes that list the base instead (see createNodes). A create
// is rejected with 503 while a node that lists its name or base is
// unavailable, or a node's model list is unknown. When other nodes list an
// older model under the name, the create goes through the fan-out path,
// which removes that model from them once the create succeeded (see
// replacement).
func (s *Server) serveSticky(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	nodes := s.bal.Usable()
	if len(nodes) == 0 {
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node")
		return
	}
	client := remoteIP(ctx)
	f := fields{pinned: stickyNode(client, nodes), stream: rt.streams}
	var plan createPlan
	if rt.name == "/api/create" {
		s.refreshBeforeWrite()
		var ok bool
		if plan, ok = s.planCreate(ctx, rt, rs, client, nodes); !ok {
			return
		}
		// The model is set so that admit applies the key's allowed_models
		// to the name created, as it does to those pulled or deleted.
		f.rawModel, f.model, f.refresh = plan.rawModel, rs.model, true
		rs.changedModel = rs.model
		if plan.pinned != nil {
			f.pinned = plan.pinned
		}
	}
	if !s.admit(ctx, rt, rs, f) {
		return
	}
	if plan.unavailable != "" {
		writeHoldersUnavailable(ctx, rt, plan.unavailable)
		return
	}
	if rt.name == "/api/create" && f.rawModel != "" {
		targets := []*balancer.Node{f.pinned}
		done := "created " + quote(f.rawModel)
		if repl := s.newReplacement(ctx, rs, done, f.rawModel, targets); repl != nil {
			rs.node = f.pinned.Name
			ctx.Response.Header.Set("X-LLMProxy-Node", f.pinned.Name)
			if plan.stream {
				s.streamFanout(ctx, rt, rs, targets, repl)
			} else {
				s.waitFanout(ctx, rt, rs, targets, repl)
			}
			return
		}
	}
	s.forward(ctx, rt, rs, f)
	// A create whose client left before the response headers, or before
	// the whole of a response that is not streamed. A streamed response
	// outlives the handler (rs.deferred), and the relay's Close purges.
	if rs.changedModel != "" && !rs.deferred && rs.node != "" && rs.status == StatusClientClosed {
		s.purgeCutOff(rs, f.pinned)
	}
}

// createPlan is the outcome of planCreate: the name, streaming and node of
// an /api/create.
type createPlan struct {
	rawModel string
	stream   bool
	// pinned is the node picked for the create, nil while unavailable is
	// set.
	pinned *balancer.Node
	// unavailable is the message of a 503 that rejects the create, "" when
	// it may run.
	unavailable string
}

// planCreate reads an /api/create body and picks its node among nodes,
// the usable nodes. It responds and returns false when the body is invalid
// or the key may not use the base model.
func (s *Server) planCreate(ctx *fasthttp.RequestCtx, rt route, rs *reqState, client string,
	nodes []*balancer.Node) (createPlan, bool) {
	var plan createPlan
	// A body without a model still goes to the node, which words the
	// error as Ollama does.
	var p fastjson.Parser
	v, err := parseObject(&p, ctx.PostBody())
	if err == nil {
		plan.rawModel, err = modelField(v, rt)
	}
	if err != nil {
		writeBodyError(ctx, rt, ctx.PostBody(), err)
		return plan, false
	}
	rs.model = wire.ModelKey(plan.rawModel)
	plan.stream = streamFlag(v, rt)
	// A key may not build on a model that it may not use.
	base := createBase(v)
	if base != "" && !allowsModel(ctx, rt, rs, base) {
		return plan, false
	}
	if plan.rawModel != "" {
		// A node that is unavailable or not listed may have an older model
		// under the name, which the create could not replace there.
		action := "create " + quote(plan.rawModel)
		if base != "" {
			action += " from " + quote(base)
		}
		plan.unavailable = s.holdersUnavailableMessage(action, quote(plan.rawModel), plan.rawModel)
		if plan.unavailable != "" {
			return plan, true
		}
	}
	candidates, err := s.createNodes(v, plan.rawModel, base, nodes)
	if err != nil {
		plan.unavailable = err.Error()
		return plan, true
	}
	plan.pinned = stickyNode(client, candidates)
	return plan, true
}

// createBase returns the model that an /api/create body builds on: its
// "from", or the FROM line of a Modelfile that older clients send. It
// returns "" when the body names none.
func createBase(v *fastjson.Value) string {
	if from, err := stringField(v, "from"); err == nil && from != "" {
		return from
	}
	modelfile, err := stringField(v, "modelfile")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(modelfile, "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && strings.EqualFold(fields[0], "FROM") {
			return fields[1]
		}
	}
	return ""
}
