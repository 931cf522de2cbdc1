# Varnish in front of a service behind tower-media-cache, purged by the
# layer's VarnishPurger (feature `varnish`). Needs vmod_xkey: Debian's
# `varnish-modules` package. tests/purge.rs runs this very file.
#
#   PURGE <url>            + Host       -> purges that URL's object (all its Vary variants)
#   PURGE /                + xkey: <t>  -> purges every object tagged <t> (xkey header)
#   BAN /                  + x-ban-url  -> bans objects whose URL matches the regex
#                                          (prefix invalidations, clears)
vcl 4.1;

import xkey;

backend app {
    .host = "127.0.0.1";
    .port = "8080";
}

# Who may purge: the hosts running the service. Everyone else gets 403.
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey) {
            # Or xkey.softpurge: keeps the objects for grace and revalidation.
            set req.http.n-gone = xkey.purge(req.http.xkey);
            return (synth(200, "Invalidated " + req.http.n-gone + " objects"));
        }
        return (purge);
    }
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.x-ban-url) {
            return (synth(400, "x-ban-url missing"));
        }
        # Lurker-friendly: tested against the object, not the request.
        ban("obj.http.x-url ~ " + req.http.x-ban-url);
        return (synth(200, "Banned"));
    }
}

sub vcl_backend_response {
    # What bans match against.
    set beresp.http.x-url = bereq.url;
}

sub vcl_deliver {
    # Tags and the ban helper stay inside.
    unset resp.http.x-url;
    unset resp.http.xkey;
}
