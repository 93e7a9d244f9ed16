package proxy

import (
	"context"
	"strings"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// PurgeModel purges the cached responses of model and logs the purge with
// reason at info level. cache.Purge empties L1 and L2 and publishes the
// purge, so that other instances that share the Redis empty their L1 too.
// PurgeModel does nothing when the cache is disabled. The app also calls
// it for the model changes that the health checker finds in model lists.
func (s *Server) PurgeModel(model, reason string) {
	if s.cache == nil || model == "" {
		return
	}
	model = wire.ModelKey(model)
	if err := s.cache.Purge(context.Background(), model); err != nil {
		// Purge empties this instance's L1 even then.
		s.log.Warn("cache purge of a changed model failed in Redis, so Redis and other instances may still serve its old responses; retry with POST /admin/cache/purge",
			"model", model, "reason", reason, "error", err)
		return
	}
	s.log.Info("cache purged", "model", model, "reason", reason)
}

// purgeChangedModel purges the cached responses of rs.changedModel when
// the model operation of rs succeeded on at least one node in results,
// because on that node the name then refers to another model, or to none.
// It also purges when the proxy cut a node's part off, as when the client
// left, for the reason given at purgeCutOff.
func (s *Server) purgeChangedModel(rs *reqState, results []fanoutResult) {
	cutOff := false
	for _, r := range results {
		if r.errMsg == "" {
			s.PurgeModel(rs.changedModel, modelOpReason(rs))
			return
		}
		cutOff = cutOff || r.cutOff
	}
	if cutOff {
		s.purgeCutOff(rs, nil)
	}
}

// purgeCutOff purges rs.changedModel after the proxy ended a node's part
// in the model operation of rs before the node's final response, and
// refreshes the model list of n unless n is nil. The proxy closes its
// connection to the node when the client leaves, so a create whose client
// left is cut off too. The operation may still have completed on the
// node: Ollama writes the manifest before it sends its final line, and
// its create (server/create.go) stops only where it next checks its
// request's context. A purge costs only cache misses, so the model is
// purged whenever the outcome is unknown.
//
// NOTE: a node that completes the operation after this purge leaves the
// responses cached in between until a model-list poll shows the new
// digest, within discovery.interval.
func (s *Server) purgeCutOff(rs *reqState, n *balancer.Node) {
	if n != nil {
		s.refreshNodes([]*balancer.Node{n})
	}
	s.PurgeModel(rs.changedModel, modelOpReason(rs)+", ended before the node's final response")
}

// modelOpReason returns the reason logged for the purge after the model
// operation of rs, such as "delete through the proxy".
func modelOpReason(rs *reqState) string {
	return strings.TrimPrefix(rs.route.name, "/api/") + " through the proxy"
}

// modelUnlisted reports whether the balancer has every node's model list
// and none of them lists model, so that a request for it gets the 404 of
// Ollama and not a response cached before the model was deleted.
func (s *Server) modelUnlisted(model string) bool {
	return model != "" && !s.bal.HasModel(model) && s.bal.ModelsKnown()
}
