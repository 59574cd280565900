# Build information for `--version` (src/base/version.cc): the project version,
# the git revision of the source tree (refreshed on every build, so it never goes
# stale; empty when the tree is not a git checkout, e.g. a release tarball) and the
# versions of the libraries found at configure time.
set(ICEBLK_GENERATED_DIR ${CMAKE_BINARY_DIR}/generated)
find_package(Git QUIET)
add_custom_target(iceblk_git_revision
  COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -DGIT_EXECUTABLE=${GIT_EXECUTABLE}
          -DOUTPUT=${ICEBLK_GENERATED_DIR}/iceblk_git_revision.h
          -P ${PROJECT_SOURCE_DIR}/cmake/git_revision.cmake
  BYPRODUCTS ${ICEBLK_GENERATED_DIR}/iceblk_git_revision.h
  COMMENT "iceblk: git revision"
  VERBATIM)
configure_file(${PROJECT_SOURCE_DIR}/cmake/iceblk_build_info.h.in ${ICEBLK_GENERATED_DIR}/iceblk_build_info.h @ONLY)

# Linked by iceblk_version (src/base): the generated headers.
add_library(iceblk_build_info INTERFACE)
target_include_directories(iceblk_build_info INTERFACE ${ICEBLK_GENERATED_DIR})
add_dependencies(iceblk_build_info iceblk_git_revision)
