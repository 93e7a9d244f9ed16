package proxy

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/balancer"
)

// replaceTimeout bounds the deletes of a replacement. A delete removes a
// manifest and the blobs that no other model uses, so a node that works
// finishes it well within this bound.
const replaceTimeout = time.Minute

// replacement removes an older model from the nodes that list the name a
// copy or create writes but do not take part in it. One Ollama server
// replaces the model under that name. Without the removal the fleet would
// list two different models under one name, and requests for it would
// reach either of them.
//
// The removal runs once the copy or create succeeded, and the client hears
// of that success only when every node removed the older model or no
// longer had it. Otherwise the client gets an error that names each node
// still holding the older model, with the status of the first such node's
// response, or 500 when it sent no error status. The copy or create itself
// stays done, and sending the request again retries the removal.
type replacement struct {
	// done is the success that an error message reports first, such as
	// `copied "a" to "b"`.
	done string
	// model is the name written, as the client sent it.
	model string
	// nodes list model and do not take part in the request.
	nodes []*balancer.Node
	// req is the DELETE of model, with the client's headers.
	req *fasthttp.Request
}

// newReplacement returns the replacement of model for a request that
// writes it on targets, or nil when no other node lists model. It runs
// before the request goes out, so the nodes it finds list the older model.
// checkHoldersUsable and the create checks reject the request first when
// such a node is unavailable or a node's model list is unknown.
func (s *Server) newReplacement(ctx *fasthttp.RequestCtx, rs *reqState, done, model string,
	targets []*balancer.Node) *replacement {
	var others []*balancer.Node
	for _, n := range s.bal.Nodes() {
		if n.HasModel(model) && !slices.Contains(targets, n) {
			others = append(others, n)
		}
	}
	if len(others) == 0 {
		return nil
	}
	body, _ := json.Marshal(struct {
		Model string `json:"model"`
	}{model})
	req := s.upstreamRequest(ctx, rs)
	req.Header.SetMethod(fasthttp.MethodDelete)
	req.SetRequestURI("/api/delete")
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(body)
	return &replacement{done: done, model: model, nodes: others, req: req}
}

// release frees the request of a replacement that does not run. It does
// nothing on nil.
func (r *replacement) release() {
	if r != nil {
		fasthttp.ReleaseRequest(r.req)
	}
}

// replaceOlder runs repl and returns an empty msg when every node removed
// the older model or did not have it (404). Otherwise it returns the
// status and message of the client's error, and logs each node that still
// has the older model at warn level, so that the split is on record even
// when the client has left. A nil repl does nothing.
func (s *Server) replaceOlder(rs *reqState, repl *replacement) (status int, msg string) {
	if repl == nil {
		return 0, ""
	}
	defer repl.release()
	// The removal finishes when the client leaves, because the copy or
	// create that it completes has already changed the nodes.
	ctx, cancel := context.WithTimeout(context.Background(), replaceTimeout)
	defer cancel()
	t, _ := s.modelOpTimeouts(routeDelete, false)
	results := make([]fanoutResult, len(repl.nodes))
	var wg sync.WaitGroup
	for i, n := range repl.nodes {
		wg.Go(func() { results[i] = s.fanoutOne(ctx, n, repl.req, t, 0, nil) })
	}
	wg.Wait()

	var removed []*balancer.Node
	var failed []fanoutResult
	for _, r := range results {
		if r.errMsg == "" || r.status == fasthttp.StatusNotFound {
			r.node.MarkRemoved(repl.model)
			removed = append(removed, r.node)
			continue
		}
		failed = append(failed, r)
		s.log.Warn("delete of the older model under a replaced name failed",
			"request_id", rs.id, "route", rs.route.name, "model", repl.model,
			"node", r.node.Name, "error", r.logText())
	}
	s.refreshNodes(removed)
	if len(failed) == 0 {
		return 0, ""
	}
	return replaceFailure(repl, failed)
}

// replaceFailure returns the status and message of the error for the
// nodes whose removal failed.
func replaceFailure(repl *replacement, failed []fanoutResult) (int, string) {
	status := failed[0].status
	if status < 400 {
		status = fasthttp.StatusInternalServerError
	}
	errs := make([]string, 0, len(failed))
	names := make([]string, 0, len(failed))
	for _, r := range failed {
		errs = append(errs, "node "+r.node.Name+": "+r.errMsg)
		names = append(names, r.node.Name)
	}
	holders := "Node " + names[0] + " still has"
	if len(names) > 1 {
		holders = "Nodes " + strings.Join(names, ", ") + " still have"
	}
	return status, repl.done + ", but removing the older " + quote(repl.model) + " failed on " +
		strings.Join(errs, "; ") + ". " + holders + " the older model under that name, " +
		"so requests for it may reach either model. Send the request again to retry the removal"
}
