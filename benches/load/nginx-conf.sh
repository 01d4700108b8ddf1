# Sourced by run.sh and ab.sh: the nginx configurations of a load run (the upstream and the plain
# reverse proxy).

# As root, nginx's workers would otherwise run as nobody, who cannot use the temp dirs.
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root;"

# nginx_common DIR [WORKERS]: the main context, WORKERS [1] worker processes ("auto": one per
# core), its pid, log and temp files in DIR.
nginx_common() {
  mkdir -p "$1/tmp"
  cat <<CONF
$NGINX_USER
worker_processes ${2:-1};
daemon off;
pid $1/nginx.pid;
error_log $1/error.log error;
events { worker_connections 8192; }
CONF
}
nginx_http_common() {
  cat <<CONF
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
CONF
}

UPSTREAM_BODY='{"domainName":"example.com","registryData":{"registrant":{"organization":"Example Inc."},"status":"clientTransferProhibited"},"estimatedDomainAge":10950}'
# upstream_conf DIR PORT: the upstream, nginx answering every request with UPSTREAM_BODY (150
# bytes of JSON). Not BODY: ab.sh, which sources this file, takes BODY from its caller.
upstream_conf() {
  nginx_common "$1"
  cat <<CONF
http {
$(nginx_http_common "$1")
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      default_type application/json;
      return 200 '$UPSTREAM_BODY';
    }
  }
}
CONF
}

# nginx_proxy_conf DIR PORT UPSTREAM_PORT KEEPALIVE [H2_PORT] [WORKERS]: nginx as a plain reverse
# proxy with upstream keep-alive (KEEPALIVE idle connections), cleartext HTTP/2 on H2_PORT if given.
nginx_proxy_conf() {
  local h2=""
  [ -n "${5:-}" ] && h2="listen 127.0.0.1:$5 http2 backlog=4096;"
  nginx_common "$1" "${6:-1}"
  cat <<CONF
http {
$(nginx_http_common "$1")
  upstream backend {
    server 127.0.0.1:$3;
    keepalive $4;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    $h2
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}
