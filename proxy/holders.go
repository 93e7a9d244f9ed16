package proxy

import (
	"hash/fnv"
	"strings"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
)

// holderRetryAfter is the Retry-After, in seconds, of a model operation
// rejected because a node that has the model is unavailable. It is a hint
// only, because the proxy cannot tell when the node comes back.
const holderRetryAfter = "10"

// unavailableHolders returns the names of the nodes that list any of
// models in their last known inventory and are not usable now, so a
// fan-out would skip them.
// NOTE: a node whose model list was never fetched lists nothing, so a
// model that only such a node has is not found here.
func (s *Server) unavailableHolders(models ...string) []string {
	var names []string
	for _, n := range s.bal.Nodes() {
		if n.Usable() {
			continue
		}
		for _, m := range models {
			if m != "" && n.HasModel(m) {
				names = append(names, n.Name)
				break
			}
		}
	}
	return names
}

// checkHoldersUsable reports whether every node that lists the model of
// a delete or copy is usable. When one is not (down, circuit breaker open
// or draining), it responds 503 and returns false.
//
// A delete that skipped such a node would return success, and the model
// would be listed again once the node is back. A copy is checked the same
// way, for its source and its destination. A copy that skipped a node
// with the source would leave the new name on some holders only. A copy
// that skipped a node with an older model under the destination name
// would leave two different models under one name once the node is back,
// and requests for it would reach either of them.
func (s *Server) checkHoldersUsable(ctx *fasthttp.RequestCtx, rt route, v *fastjson.Value,
	model string) bool {
	var names []string
	var action, subject string
	switch rt.name {
	case "/api/delete":
		names = s.unavailableHolders(model)
		action, subject = "delete "+quote(model), "the model"
	case "/api/copy":
		destination, _ := stringField(v, "destination")
		names = s.unavailableHolders(model, destination)
		action, subject = "copy "+quote(model)+" to "+quote(destination), "the source or destination"
	default:
		return true
	}
	if len(names) == 0 {
		return true
	}
	msg := "cannot " + action + " because node " + names[0] +
		", which has " + subject + ", is unavailable. Try again when it is back"
	if len(names) > 1 {
		msg = "cannot " + action + " because nodes " + strings.Join(names, ", ") +
			", which have " + subject + ", are unavailable. Try again when they are back"
	}
	writeError(ctx, rt, fasthttp.StatusServiceUnavailable, msg)
	ctx.Response.Header.Set("Retry-After", holderRetryAfter)
	return false
}

// stickyNode returns the node that rendezvous hashing of the client
// address picks among nodes. The pick among a subset of nodes is the
// subset's highest-ranked node, so it is the pick among all nodes
// whenever that node is in the subset.
func stickyNode(client string, nodes []*balancer.Node) *balancer.Node {
	var best *balancer.Node
	var bestRank uint64
	for _, n := range nodes {
		h := fnv.New64a()
		h.Write([]byte(client))
		h.Write([]byte(n.Name))
		if r := h.Sum64(); best == nil || r > bestRank {
			best, bestRank = n, r
		}
	}
	return best
}

// createNodes returns the nodes among which an /api/create is pinned by
// client address. A create that builds on a base model goes to the usable
// nodes that list the base, so that no node downloads the base again or
// fails to find a model that only other nodes have. A create that uses
// uploaded blobs keeps all usable nodes, because the blobs are only on the
// node picked among all of them, while a node without the base pulls it
// from the registry. When no usable node lists the base, all usable nodes
// are returned.
func (s *Server) createNodes(v *fastjson.Value, base string, usable []*balancer.Node) []*balancer.Node {
	if base == "" || createUsesBlobs(v) {
		return usable
	}
	if holders := s.bal.Listing(base); len(holders) > 0 {
		return holders
	}
	return usable
}

// createUsesBlobs reports whether an /api/create body refers to uploaded
// blobs: in "files" or "adapters", or as an @sha256: reference in the
// Modelfile that older clients send.
func createUsesBlobs(v *fastjson.Value) bool {
	for _, key := range []string{"files", "adapters"} {
		if o := v.GetObject(key); o != nil && o.Len() > 0 {
			return true
		}
	}
	modelfile, _ := stringField(v, "modelfile")
	return strings.Contains(modelfile, "@sha256:")
}
