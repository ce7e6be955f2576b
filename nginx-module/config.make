# Appended to objs/Makefile by auto/make: builds the Rust staticlib against this configured
# nginx (nginx-sys runs bindgen on objs/ through NGINX_BUILD_DIR, and needs the source
# tree too, NGINX_SOURCE_DIR, when --builddir puts objs/ elsewhere; make runs in the source
# tree). Phony, so cargo decides what to rebuild.

cat << END >> $NGX_MAKEFILE

.PHONY: $NOISE_LIB
$NOISE_LIB:
	cd $NOISE_REPO && NGINX_BUILD_DIR=\$(abspath $NGX_OBJS) NGINX_SOURCE_DIR=\$(CURDIR) \\
		cargo rustc --release --lib --features nginx --crate-type staticlib \\
		--target-dir $NOISE_TARGET

END
