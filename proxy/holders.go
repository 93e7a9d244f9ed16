package proxy

import (
	"errors"
	"strings"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
)

// holderRetryAfter is the Retry-After, in seconds, of a model operation
// rejected because a node that may have the model is unavailable or has
// not been listed yet. It is a hint only, because the proxy cannot tell
// when the node comes back.
const holderRetryAfter = "10"

// unavailableHolders returns the names of the nodes that list any of
// models in their last known inventory and are down or draining now, so a
// fan-out would skip them.
func (s *Server) unavailableHolders(models ...string) []string {
	var names []string
	for _, n := range s.bal.Nodes() {
		if n.Manageable() {
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

// unlistedNodes returns the names of the nodes whose model list has never
// been fetched, such as a node that has been down since the proxy started.
// Any model may be on such a node.
func (s *Server) unlistedNodes() []string {
	var names []string
	for _, n := range s.bal.Nodes() {
		if !n.ModelsListed() {
			names = append(names, n.Name)
		}
	}
	return names
}

// holdersUnavailableMessage returns why action cannot run now when a node
// that lists any of models is down or draining, or when a node's model
// list has never been fetched while another node is manageable. It
// returns "" when neither is the case. subject names what the unavailable
// nodes have, such as "the model". With no manageable node and no known
// holder, the caller responds "no healthy node" instead.
func (s *Server) holdersUnavailableMessage(action, subject string, models ...string) string {
	if names := s.unavailableHolders(models...); len(names) == 1 {
		return "cannot " + action + " because node " + names[0] +
			", which has " + subject + ", is unavailable. Try again when it is back"
	} else if len(names) > 1 {
		return "cannot " + action + " because nodes " + strings.Join(names, ", ") +
			", which have " + subject + ", are unavailable. Try again when they are back"
	}
	if len(s.bal.Manageable()) == 0 {
		return ""
	}
	if names := s.unlistedNodes(); len(names) == 1 {
		return "cannot " + action + " because the model list of node " + names[0] +
			" is not known yet. Try again shortly"
	} else if len(names) > 1 {
		return "cannot " + action + " because the model lists of nodes " + strings.Join(names, ", ") +
			" are not known yet. Try again shortly"
	}
	return ""
}

// checkHoldersUsable reports whether every node that may have the model
// of a delete or copy is manageable and listed. When a node that lists
// the model is down or draining, or a node's model list has never been
// fetched, it responds 503 and returns false. A restricted or ejected node
// does not stop the request, because the fan-out reaches it.
//
// A delete that skipped such a node would return success, and the model
// would be listed again once the node is back. A copy is checked the same
// way, for its source and its destination. A copy that skipped a node
// with the source would leave the new name on some holders only. A copy
// also removes an older model under the destination name from the nodes
// without the source (see replacement). A node with that model that the
// copy skipped would keep it, so the fleet would list two different models
// under one name once the node is back. planCreate checks the name of a
// create the same way.
func (s *Server) checkHoldersUsable(ctx *fasthttp.RequestCtx, rt route, v *fastjson.Value,
	model string) bool {
	var msg string
	switch rt.name {
	case "/api/delete":
		msg = s.holdersUnavailableMessage("delete "+quote(model), "the model", model)
	case "/api/copy":
		destination, _ := stringField(v, "destination")
		msg = s.holdersUnavailableMessage("copy "+quote(model)+" to "+quote(destination),
			"the source or destination", model, destination)
	default:
		return true
	}
	if msg == "" {
		return true
	}
	writeHoldersUnavailable(ctx, rt, msg)
	return false
}

// writeHoldersUnavailable responds 503 with msg and a Retry-After.
func writeHoldersUnavailable(ctx *fasthttp.RequestCtx, rt route, msg string) {
	writeError(ctx, rt, fasthttp.StatusServiceUnavailable, msg)
	ctx.Response.Header.Set("Retry-After", holderRetryAfter)
}

// stickyNode returns the node that rendezvous hashing of the client
// address picks among nodes. The pick among a subset of nodes is the
// subset's highest-ranked node, so it is the pick among all nodes
// whenever that node is in the subset.
func stickyNode(client string, nodes []*balancer.Node) *balancer.Node {
	var best *balancer.Node
	var bestRank uint64
	for _, n := range nodes {
		if r := balancer.Rendezvous(client, n.Name); best == nil || r > bestRank {
			best, bestRank = n, r
		}
	}
	return best
}

// createNodes returns the nodes among which an /api/create of model is
// pinned by client address. A create that builds on a base model goes to
// the usable nodes that list the base, so that no node downloads the base
// again or fails to find a model that only other nodes have. A create that
// uses uploaded blobs keeps all usable nodes, because the blobs are only
// on the node picked among all of them, while a node without the base
// pulls it from the registry.
//
// When no usable node lists the base, another node would pull it from the
// registry. So createNodes returns an error, whose message is meant for a
// 503, if a node that lists the base is unavailable or a node's model list
// has never been fetched. Otherwise no node has the base, and all usable
// nodes are returned, so the node picked pulls it as Ollama does.
func (s *Server) createNodes(v *fastjson.Value, model, base string,
	usable []*balancer.Node) ([]*balancer.Node, error) {
	if base == "" || createUsesBlobs(v) {
		return usable, nil
	}
	if holders := s.bal.Listing(base); len(holders) > 0 {
		return holders, nil
	}
	action := "create " + quote(model) + " from " + quote(base)
	if msg := s.holdersUnavailableMessage(action, quote(base), base); msg != "" {
		return nil, errors.New(msg)
	}
	return usable, nil
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
